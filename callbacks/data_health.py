"""Log how many training samples the data pipeline skipped, by reason."""
from __future__ import annotations

import pytorch_lightning as pl


class SkippedSamples(pl.Callback):
    """Every ``every`` steps, log ``data/skipped/<reason>`` from the DataModule's
    ``skip_counts()`` (corrupt or invalid samples are skipped, never fatal)."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        counts = getattr(trainer.datamodule, "skip_counts", dict)()
        if counts and trainer.global_step % self.every == 0:
            pl_module.log_dict({f"data/skipped/{k}": float(v) for k, v in counts.items()},
                               rank_zero_only=True)
