"""Optimizer and learning-rate schedule from a ``MethodConfig``, in Lightning's
``configure_optimizers`` form (the scheduler steps every optimizer step)."""
from __future__ import annotations

import functools

import torch

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def lr_factor(step: int, schedule: str, milestones: list[int], gamma: float,
              warmup_steps: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warm-up over
    ``warmup_steps``, then constant, or ``gamma`` once more at every milestone passed."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    if schedule == "step":
        return warm * gamma ** sum(step >= m for m in milestones)
    raise ValueError(f"unknown lr_schedule {schedule!r} (known: constant, step)")


def build_optimizer(params: list[torch.nn.Parameter], method) -> dict:
    """``{"optimizer", "lr_scheduler"}`` for ``configure_optimizers``."""
    optimizer = OPTIMIZERS[method.optimizer](params, lr=method.lr,
                                             weight_decay=method.weight_decay)
    factor = functools.partial(lr_factor, schedule=method.lr_schedule,
                               milestones=list(method.lr_milestones), gamma=method.lr_gamma,
                               warmup_steps=method.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    # "name": LearningRateMonitor logs train/lr (train/lr/pg<k> with several param groups)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step",
                                                     "frequency": 1, "name": "train/lr"}}
