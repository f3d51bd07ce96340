"""Log how many training samples the data pipeline skipped, by reason."""
from __future__ import annotations

import pytorch_lightning as pl


class SkippedSamples(pl.Callback):
    """Every ``every`` steps, log ``data/skipped`` (all reasons; 0 while none was) and
    ``data/skipped/<reason>`` from the DataModule's ``skip_counts()`` (corrupt or invalid
    samples are skipped, never fatal). A DataModule without ``skip_counts`` logs nothing."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        counter = getattr(trainer.datamodule, "skip_counts", None)
        if counter is None or trainer.global_step % self.every:
            return
        counts = counter()
        pl_module.log_dict({"data/skipped": float(sum(counts.values())),
                            **{f"data/skipped/{k}": float(v) for k, v in counts.items()}},
                           on_step=True, on_epoch=False, rank_zero_only=True)
