"""Run state on disk: atomic, weights-only Lightning checkpoints and the trainable-weights
file, published only after the checkpoint of its step is written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from ldm_ext.weights import load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it into place, so a process
    killed mid-write (SIGKILL, preemption) never leaves a truncated ``last.ckpt``.

    ``torch.save`` streams into that file: Lightning's own save serialises the whole
    checkpoint into an in-memory buffer first and copies it once more to write it (two
    checkpoint-sized copies in RAM: ~19 GB more for a full SD1.5 UNet with AdamW state)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location: Any = "cpu",
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Resume reads tensors and plain containers only, whatever Lightning asks for
        (``weights_only`` is ignored): our checkpoints hold nothing else, and a
        ``last.ckpt`` swapped in from elsewhere must not run code (``weights.load_checkpoint``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint(path, map_location)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's step checkpoints and ``last.ckpt``, plus ``<run>/trainable.safetensors``
    (rank 0; only trainable weights, by name) published from the same state, and only once
    that step's checkpoint writes have all succeeded: a save that fails (a full disk) leaves
    the trainable file at the checkpoint before, never ahead of it. The end of training is
    checkpointed too when it falls between ``every_n_train_steps``, so a finished run's
    checkpoint and trainable file are both its end state. A step file left by a killed run
    is overwritten when a resumed run saves that step again (``enable_version_counter`` is
    off: no ``step0000004-v1.ckpt`` twin).

    Builds on ModelCheckpoint's bookkeeping (``_last_global_step_saved``, the step of its
    last successful write, and its save methods), as its subclasses in Lightning do."""

    def __init__(self, trainable: str | Path, **kwargs: Any) -> None:
        super().__init__(enable_version_counter=False, **kwargs)
        self.trainable = Path(trainable)
        self._published = -1

    def on_train_batch_end(self, trainer, pl_module, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        self._publish(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._last_global_step_saved != trainer.global_step:  # ended between saves
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)
        self._publish(trainer, pl_module)

    def _publish(self, trainer, pl_module) -> None:
        """Write the trainable weights atomically if this step's checkpoint is on disk and
        they are not yet published."""
        step = trainer.global_step
        if self._last_global_step_saved != step or self._published == step:
            return
        if trainer.is_global_zero:
            tmp = self.trainable.with_name(f".{self.trainable.name}.tmp")
            pl_module.save_trainable(tmp, {"global_step": str(step)})
            os.replace(tmp, self.trainable)
        self._published = step


def remove_partial_saves(folder: str | Path) -> list[Path]:
    """Delete the temporary files of saves a killed run left unfinished in ``folder``
    (``AtomicCheckpointIO``'s and ``RunCheckpoint``'s ``.<name>.tmp``); return them."""
    partial = sorted(Path(folder).glob(".*.tmp"))
    for path in partial:
        path.unlink()
    return partial
