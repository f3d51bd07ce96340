"""Run state on disk: atomic, weights-only Lightning checkpoints and the trainable-weights
export."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ldm_ext.weights import load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it into place, so a process
    killed mid-write (SIGKILL, preemption) never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
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


class TrainableExport(pl.Callback):
    """Keep ``<run>/trainable.safetensors`` in step with the latest checkpoint and the
    end of training (rank 0 writes; only trainable weights, by name)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _export(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            pl_module.save_trainable(tmp, {"global_step": str(trainer.global_step)})
            os.replace(tmp, self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._export(trainer, pl_module)
