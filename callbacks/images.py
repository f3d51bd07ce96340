"""Images for the logger: sample grids during training (fixed prompts and identities ->
the method's pipeline -> a labelled PNG in ``<run>/samples/`` and captioned images in
wandb) and attention-map overlays (which identity's face tokens each pixel attends to)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.loggers import WandbLogger

from ldm_ext.evaluation.grid_labels import GridLabels, save_grid
from ldm_ext.face.align import tensor_to_uint8
from ldm_ext.perception.pose import slot_color


def identity_shares(maps: torch.Tensor, groups: list[slice]) -> torch.Tensor:
    """(len(groups), S, S) attention mass per pixel on each key group, from one image's
    maps (K, S, S): the text (group 0) and each identity's tokens (groups 1…N), as the
    method's ``identity_key_groups`` gives them (rows sum to 1 where the maps are softmax
    rows over all keys and the groups cover them)."""
    return torch.stack([maps[group].sum(0) for group in groups])


def _upsample(shares: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, S, S) -> (C, H, W) float numpy, bilinear."""
    return F.interpolate(shares[None].float(), size=size, mode="bilinear",
                         align_corners=False)[0].numpy()


def attention_overlay(image: Image.Image, shares: torch.Tensor) -> Image.Image:
    """One row: the image; the image tinted, pixel by pixel, with the slot colour of the
    identity whose face tokens it attends to most (opacity = that identity's share); then
    a heat map of each identity's share on the absolute scale 0..1 (so a share spread
    evenly over the image, e.g. Eq. 6's logit-0 face keys of an untrained model, stays
    dark instead of being stretched to full brightness).

    ``shares``: (1 + N, S, S) from :func:`identity_shares`.
    """
    width, height = image.size
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255  # (H, W, 3)
    faces = _upsample(shares, (height, width))[1:].clip(0, 1)  # (N, H, W)
    top = faces.argmax(0)  # (H, W) the identity attended to most
    palette = [slot_color(k) for k in range(len(faces))]
    colours = np.asarray(palette, np.float32)[top] / 255  # (H, W, 3)
    opacity = np.take_along_axis(faces, top[None], 0)[0, ..., None]  # (H, W, 1)
    panels = [rgb, rgb * (1 - opacity) + colours * opacity]
    grey = rgb.mean(-1, keepdims=True) * 0.4
    colormap = matplotlib.colormaps["inferno"]
    for share in faces:
        panels.append(grey + colormap(share)[..., :3] * 0.6)
    row = np.concatenate(panels, axis=1)
    return Image.fromarray((row.clip(0, 1) * 255).round().astype(np.uint8))


def gather_identities(seen: torch.Tensor | None, found: torch.Tensor | None,
                      need: int) -> torch.Tensor | None:
    """(<= need, ...) identities for sampling callbacks: those ``seen`` so far, topped up
    with a batch's (``found``, the method's ``batch_identities``) until there are ``need``."""
    if found is None or (seen is not None and len(seen) >= need):
        return seen
    return (found if seen is None else torch.cat([seen, found]))[:need]


def cycled(identities: torch.Tensor, need: int) -> torch.Tensor:
    """(need, 3, S, S): slot k gets identity k mod K, when fewer faces were seen."""
    return identities[torch.arange(need) % len(identities)]


def log_images(trainer: pl.Trainer, key: str, images: list[Image.Image],
               captions: list[str]) -> None:
    """Log ``images`` as ``key`` to the wandb loggers at this step, each with its caption."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and images:
            logger.log_image(key, list(images), step=trainer.global_step, caption=list(captions))


def reference_photos(pl_module, identities: torch.Tensor | None) -> list[tuple[str, Image.Image]]:
    """``("id<k>", photo)`` of the identity in each slot: the face crops the method's
    ``reference_faces`` gives for them (none without identities)."""
    if identities is None:
        return []
    crops = tensor_to_uint8(pl_module.reference_faces(identities))  # (K, S, S, 3)
    return [(f"id{k}", Image.fromarray(crop)) for k, crop in enumerate(crops)]


def panels(row: Image.Image, width: int, cols: int) -> list[Image.Image]:
    """The ``width``-wide panels of an image row (an attention overlay row), then white
    ones up to ``cols``: rows of fewer identities line up in one grid."""
    cut = [row.crop((x, 0, x + width, row.height)) for x in range(0, row.width, width)]
    return cut + [Image.new("RGB", (width, row.height), "white")] * (cols - len(cut))


@torch.no_grad()
def sample_cells(pl_module, identities: torch.Tensor | None,
                 generator: torch.Generator) -> tuple[list[Image.Image], int]:
    """The cells of a sample grid from the method's sample settings (``method.sample_*``):
    the pipeline's legend row (if it draws one), then every sample prompt with the first k
    identities for each k in ``sample_num_ids`` (all prompts once, without identities, when
    ``identities`` is None). Returns (images, columns)."""
    method, size = pl_module.cfg.method, (pl_module.cfg.data.resolution,) * 2
    counts = list(method.sample_num_ids) if identities is not None else [0]
    pipe, was_training = pl_module.pipeline(), pl_module.training
    pl_module.eval()
    legend = [pipe.legend(identities[:k], size) for k in counts if k]
    legend = legend if all(cell is not None for cell in legend) else []
    images = [pipe(prompt, identities[:k] if k else None, size=size,
                   steps=method.sample_steps, guidance=method.guidance_scale,
                   generator=generator, progress=False)
              for prompt in method.sample_prompts for k in counts]
    pl_module.train(was_training)
    return legend + images, len(counts)


class SampleGrid(pl.Callback):
    """Every ``every`` steps (0: only at the end) render ``sample_cells`` for
    identities taken from the first training batches (``pl_module.batch_identities``;
    methods without any get the sample prompts alone), on rank 0."""

    def __init__(self, out_dir: str | Path, every: int, num_ids: int, seed: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.every, self.num_ids, self.seed = every, num_ids, seed
        self.identities: torch.Tensor | None = None  # (K, 3, S, S)
        self.seen_batch = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.identities = gather_identities(self.identities, pl_module.batch_identities(batch),
                                            self.num_ids)
        self.seen_batch = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            self.render(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.render(trainer, pl_module)

    def render(self, trainer: pl.Trainer, pl_module) -> Path | None:
        """Write (and log) one grid on rank 0; every rank returns after the barrier, so
        the others wait here, not inside the next step's gradient collective (whose
        timeout a long sampling run could outlast)."""
        path = None
        if trainer.is_global_zero and self.seen_batch:
            path = self._render(trainer, pl_module)
        trainer.strategy.barrier("idforge-samples")
        return path

    def _render(self, trainer: pl.Trainer, pl_module) -> Path:
        """One labelled grid (rows = prompts, columns = identity counts N, the pipeline's
        legend row and the reference photos above) as a PNG, and its cells to wandb, each
        captioned with its prompt, N, seed and step."""
        ids = None if self.identities is None else cycled(self.identities, self.num_ids)
        generator = torch.Generator().manual_seed(self.seed)
        images, cols = sample_cells(pl_module, ids, generator)
        method, step = pl_module.cfg.method, trainer.global_step
        prompts = list(method.sample_prompts)
        counts = list(method.sample_num_ids) if ids is not None else [0]
        legend, cells = images[:len(images) - len(prompts) * cols], images[-len(prompts) * cols:]
        references = reference_photos(pl_module, ids)
        labels = GridLabels(f"{method.name} · seed {self.seed} · step {step}",
                            [f"N={n}" if n else "no identity" for n in counts],
                            ["conditioning"] * bool(legend) + prompts, references)
        path = save_grid(labels.render(legend + cells, cols),
                        self.out_dir / f"step_{step:07d}.png")
        log_images(trainer, "samples", cells, [f"{p} | N={n} | seed {self.seed} | step {step}"
                                               for p in prompts for n in counts])
        log_images(trainer, "samples/references", [photo for _, photo in references],
                   [f"{name}: reference of slot {k}" for k, (name, _) in enumerate(references)])
        log_images(trainer, "samples/conditioning", legend,
                   [f"conditioning of N={n} | step {step}" for n in counts])
        return path
