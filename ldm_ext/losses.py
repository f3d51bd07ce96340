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


def face_attention_loss(target: list[torch.Tensor],
                        reference: list[torch.Tensor]) -> torch.Tensor:
    """SeFi-IDE's face-wise attention loss (Eq. 4, Alg. 1): MSE(A_t, A_r).

    ``target[g]`` / ``reference[g]``: (B, heads, 77, s, s) softmax maps of the same queries
    against the target's and the reference prompt's keys, over all tokens, resized to
    s x s (32) and averaged over the cross-attention layers (Alg. 1's Re2 gathers the
    layers into one heads x 77 x 32 x 32 map); one entry per head count (SD1.5's layers
    all have 8 heads, SDXL's differ), the mean running over every element of all. A_r is
    detached: only the target side trains."""
    total = sum((a_t.float() - a_r.detach().float()).pow(2).sum()
                for a_t, a_r in zip(target, reference, strict=True))
    return total / sum(a_t.numel() for a_t in target)
