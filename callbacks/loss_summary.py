"""Print, when training ends, whether the loss fell: the mean of its first and last steps."""
from __future__ import annotations

from collections import deque
from statistics import fmean

import pytorch_lightning as pl
import torch


class LossSummary(pl.Callback):
    """Keep the training loss of the first and the last ``window`` steps and print one line
    comparing their means at the end, e.g. ``loss: first 10 steps 1.06 -> last 10 steps
    0.45``. One noisy step's loss says little about learning; two window means do.

    The kept losses are part of the checkpoint, so a resumed run still compares with the
    run's first steps. Each rank keeps its own losses; rank zero prints.

    Args:
        window (int, default 10): steps per mean.
    """

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self.first: list[float] = []
        self.last: deque[float] = deque(maxlen=window)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:  # a step the method chose to skip
            return
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if len(self.first) < self.window:
            self.first.append(value)
        self.last.append(value)

    def summary(self) -> str | None:
        """The comparison line, or None before the first step."""
        if not self.first:
            return None
        return (f"loss: first {len(self.first)} steps {fmean(self.first):.2f} -> "
                f"last {len(self.last)} steps {fmean(self.last):.2f}")

    def on_train_end(self, trainer, pl_module) -> None:
        line = self.summary()
        if line is not None and trainer.is_global_zero:
            print(line, flush=True)

    def state_dict(self) -> dict:
        return {"first": list(self.first), "last": list(self.last)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.first = list(state_dict["first"])
        self.last = deque(state_dict["last"], maxlen=self.window)
