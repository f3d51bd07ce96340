"""Losses shared by the methods. Each cites the equation it implements."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_target(scheduler, latents: torch.Tensor, noise: torch.Tensor,
                 timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses: ε for ``epsilon`` schedulers, v for ``v_prediction``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def noise_loss(pred: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """LDM objective ||ε - ε_θ(z_t, t, c)||², averaged; optionally only inside ``mask``
    (B, 1, h, w) (PortraitBooth restricts half the samples to the face region)."""
    err = F.mse_loss(pred.float(), target.float(), reduction="none")
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype).expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)
