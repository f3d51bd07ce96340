"""Per-step wall time of a LightningModule trained by ``trainer.fit``, shared by the
training-step benchmarks (``step_overhead.py``, ``storymaker_step.py``): a callback holding a
``timing.Stopwatch`` between the batch hooks, so data loading is left out."""
from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from benchmarks.timing import Stopwatch


class StepTimer(pl.Callback):
    """Wall time of every optimizer step, measured between batch start and end hooks."""

    def __init__(self, device: str) -> None:
        self.clock, self.times = Stopwatch(device), []

    def on_train_batch_start(self, *args) -> None:
        self.clock.start()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(self.clock.elapsed())


def lightning_steps(method: pl.LightningModule, batch: dict, steps: int,
                    device: str) -> list[float]:
    """Seconds of each of ``steps`` training steps of ``trainer.fit`` on ``batch`` (data
    loading excluded; no logger, checkpoints, progress bar or sanity check; clipping 1.0)."""
    timer = StepTimer(device)
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                         max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0, gradient_clip_val=1.0)
    trainer.fit(method, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return timer.times
