"""The classifier-free-guidance denoising loop every method's pipeline shares."""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       SchedulerMixin, UniPCMultistepScheduler)
from PIL import Image
from tqdm.auto import tqdm

NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# name -> (diffusers scheduler class, config overrides); ldm_ext.config.SAMPLERS lists them
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
}


def inference_scheduler(train_scheduler, kind: str = "ddim") -> SchedulerMixin:
    """A sampling scheduler by name, built from the training scheduler's config (so
    beta schedule and prediction type carry over)."""
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {kind!r} (known: {', '.join(SCHEDULERS)})")
    cls, overrides = SCHEDULERS[kind]
    return cls.from_config(train_scheduler.config, **overrides)


def image_generator(seed: int, index: int) -> torch.Generator:
    """The generator of image ``index`` of a run seeded ``seed``: every image owns its
    randomness, so an image does not depend on which images were made before it (a
    resumed run equals an uninterrupted one, whatever the sampler draws)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**63)


def initial_latents(shape: tuple[int, ...], generator: torch.Generator | None,
                    device, dtype) -> torch.Tensor:
    """Gaussian latents drawn on the CPU (identical on every device), then moved."""
    return torch.randn(shape, generator=generator, device="cpu").to(device, dtype)


def guide(branches: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Chained classifier-free guidance over K+1 stacked predictions (b_0 … b_K, each
    adding one condition to the previous): ε = b_0 + Σ_k s_k (b_k − b_{k−1}).

    Two branches (unconditional, conditional) and one scale g are the usual CFG
    ε_u + g (ε_c − ε_u); three with (s, g) give separate condition scales, e.g.
    ε_u + s (ε_id − ε_u) + g (ε_c − ε_id)."""
    preds = branches.chunk(len(scales) + 1)
    eps = preds[0]
    for k, scale in enumerate(scales, start=1):
        eps = eps + scale * (preds[k] - preds[k - 1])
    return eps


@torch.no_grad()
def denoise(scheduler: SchedulerMixin, predict: NoiseFn, latents: torch.Tensor, steps: int,
            guidance: float | Sequence[float], progress: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Run ``steps`` scheduler steps with (chained) classifier-free guidance.

    ``predict(latents_KB, t)`` gets the latents once per branch (K = 1 + number of
    guidance scales; the least conditioned branch first) and returns every branch's
    noise prediction (KB, C, h, w), combined by :func:`guide`. ``generator`` feeds
    stochastic samplers (their ``step`` draws noise)."""
    scales = [guidance] if isinstance(guidance, (int, float)) else list(guidance)
    scheduler.set_timesteps(steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    extra = {"generator": generator} if "generator" in inspect.signature(
        scheduler.step).parameters else {}
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="sampling", leave=False):
        model_in = scheduler.scale_model_input(latents.repeat(len(scales) + 1, 1, 1, 1), t)
        eps = guide(predict(model_in, t.expand(model_in.shape[0])), scales)
        latents = scheduler.step(eps, t, latents, **extra).prev_sample
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
