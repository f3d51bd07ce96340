"""Sample grids during training: fixed prompts and identities -> the method's pipeline
-> a PNG in ``<run>/samples/`` and an image in wandb."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from ldm_ext.pipelines.sampling import image_grid


class SampleGrid(pl.Callback):
    """Every ``every`` steps (0: only at the end) render ``pl_module.sample_images`` for
    identities taken from the first training batches, on rank 0."""

    def __init__(self, out_dir: str | Path, every: int, num_ids: int, seed: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.every, self.num_ids, self.seed = every, num_ids, seed
        self.identities: torch.Tensor | None = None  # (K, 3, S, S)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        have = 0 if self.identities is None else len(self.identities)
        if have < self.num_ids:
            crops = batch["face_crops"][batch["face_valid"]].detach().cpu()
            found = crops if self.identities is None else torch.cat([self.identities, crops])
            self.identities = found[: self.num_ids]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            self.render(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.render(trainer, pl_module)

    def render(self, trainer: pl.Trainer, pl_module) -> Path | None:
        """Write (and log) one grid: rows = prompts, columns = identity counts."""
        if not trainer.is_global_zero or self.identities is None or not len(self.identities):
            return None
        ids = self.identities
        while len(ids) < self.num_ids:  # too few faces seen: reuse them
            ids = torch.cat([ids, self.identities])[: self.num_ids]
        generator = torch.Generator().manual_seed(self.seed)
        images, cols = pl_module.sample_images(ids, generator)
        grid = image_grid(images, cols)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step_{trainer.global_step:07d}.png"
        grid.save(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples", [grid], step=trainer.global_step)
        return path
