"""The classifier-free-guidance denoising loop every method's pipeline shares."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, SchedulerMixin
from PIL import Image
from tqdm.auto import tqdm

NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def inference_scheduler(train_scheduler, kind: str = "ddim") -> SchedulerMixin:
    """A sampling scheduler built from the training scheduler's config."""
    if kind != "ddim":
        raise ValueError(f"unknown scheduler {kind!r} (known: ddim)")
    return DDIMScheduler.from_config(train_scheduler.config)


@torch.no_grad()
def denoise(scheduler: SchedulerMixin, predict: NoiseFn, latents: torch.Tensor, steps: int,
            guidance: float, progress: bool = True) -> torch.Tensor:
    """Run ``steps`` scheduler steps with CFG.

    ``predict(latents_2B, t)`` gets the latents twice, unconditional half first, and
    returns both noise predictions (2B, C, h, w); guidance combines them as
    ε_u + g (ε_c − ε_u).
    """
    scheduler.set_timesteps(steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="sampling", leave=False):
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        uncond, cond = predict(model_in, t.expand(model_in.shape[0])).chunk(2)
        eps = uncond + guidance * (cond - uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


@torch.no_grad()
def decode_images(vae, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode latents to PIL images."""
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    arrays = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arrays]


def image_grid(images: list[Image.Image], cols: int) -> Image.Image:
    """Tile equally sized images into a grid, row-major."""
    width, height = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * width, (i // cols) * height))
    return grid


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
