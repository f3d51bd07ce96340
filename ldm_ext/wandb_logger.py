"""Lightning's WandbLogger with the experiment config as the run config, finished with
the fit."""
from __future__ import annotations

from argparse import Namespace
from typing import Any

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only


class ConfigLogger(WandbLogger):
    """A ``WandbLogger`` whose run config is the resolved experiment config, given at
    ``wandb.init`` (``config=``). What Lightning logs as hyperparameters itself (the
    DataModule's constructor arguments) goes under ``datamodule`` beside it, instead of
    among its top-level keys (``batch_size`` next to ``data.batch_size``).

    The wandb run is finished when the fit ends (failed: exit code 1), so everything
    logged is in its files then, and a second fit in the same process (``ldm_ext.fit``
    of several subjects, a resume) starts its own run instead of joining this one (the
    plain WandbLogger reuses a run still open in the process)."""

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        super().log_hyperparams({"datamodule": params})

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None
