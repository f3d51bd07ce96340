"""Cost of PortraitBooth's DIP (Eq. 5-6) and ECAC (Eq. 7) in a training step, against the
plain noise-loss step of the same model.

    python -m benchmarks.portraitbooth_dip_overhead [--device cpu|cuda] [--pairs 12]
        [--resolution 256] [--decode window|full]

Both sides train the same SD1.5-shaped PortraitBooth (UNet and VAE at 1/5 of SD1.5's
widths, so the decoder-to-UNet cost ratio is SD1.5's; STEA, random FaceNet) on the same
CelebV-Text-like batch of 4 portraits (face box 40 % x 50 %), timesteps fixed at
100, 400, 650, 900: one sample in four at t <= R_t = 250, the share uniform timesteps
give. A step is the model step, backward and the AdamW update.

- with: Eq. 8 in full: DIP decodes the one sample at t <= 250 (``--decode window``: its
  face box + 4 latents of context, the default; ``full``: the whole latent) and runs the face
  encoder forward and backward; ECAC materialises the cross-attention maps of the 16 layers.
- plain: the same module with ``id_weight = 0`` and ``λ = μ = 0``: noise loss only, every
  attention layer on the fused kernel.

Method, for a shared, noisy machine: after warm-up, many short pairs (one step each, who
goes first alternating), the figure is the median of the per-pair ratios; quartiles beside.
Times are wall clock on CUDA (synchronised); on the CPU this process's CPU time with
``--threads`` (default 1) intra-op threads, as ``attention_overhead.py`` measures: on a
shared 2-core machine wall time mostly measures the other processes.

Ends with ``RESULT portraitbooth_dip_overhead_ratio=<with/plain> goal<=1.25``.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.portraitbooth_random import portrait_batch, random_portraitbooth
from benchmarks.timing import timed
from ldm_ext.losses import noise_target

GOAL = 1.25
TIMESTEPS = [100, 400, 650, 900]


def fix_timesteps(method, timesteps: list[int]) -> None:
    """Make ``method.noised_latents`` use ``timesteps`` instead of drawing them."""
    sched = method.backbone.scheduler

    def noised(latents: torch.Tensor, generator: torch.Generator):
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        t = torch.tensor(timesteps, device=latents.device)
        return sched.add_noise(latents, noise, t), t, noise_target(sched, latents, noise, t)

    method.noised_latents = noised


def set_losses(method, full: bool, weights: dict[str, float]) -> None:
    """Eq. 8 in full (the config's weights) or the noise loss alone (DIP and ECAC off)."""
    for key, value in weights.items():
        setattr(method.cfg.method, key, value if full else 0.0)


def timed_step(method, batch: dict, optimizer, device: str, seed: int) -> float:
    """Seconds of one training step: model step, backward, optimizer update (wall clock
    on CUDA, this process's CPU time on the CPU)."""
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        gen = torch.Generator(device=device).manual_seed(seed)
        method.model_step(batch, gen)["loss"].backward()
        optimizer.step()

    return timed(step, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch intra-op threads")
    parser.add_argument("--decode", choices=("window", "full"), default="window")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    method = random_portraitbooth(args.resolution, [
        "method.empty_prompt_prob=0", "method.text_only_prob=0",
        f"method.dip_decode={args.decode}"]).to(args.device).train()
    fix_timesteps(method, TIMESTEPS)
    hp = method.cfg.method
    weights = {k: float(getattr(hp, k)) for k in ("id_weight", "loc_identity_weight",
                                                 "loc_expression_weight")}
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v
             for k, v in portrait_batch(len(TIMESTEPS), args.resolution).items()}
    optimizer = torch.optim.AdamW(list(method.trainable_parameters().values()), lr=1e-5)
    times: dict[bool, list[float]] = {True: [], False: []}
    for pair in range(args.warmup + args.pairs):
        for full in ((True, False) if pair % 2 else (False, True)):
            set_losses(method, full, weights)
            times[full].append(timed_step(method, batch, optimizer, args.device, pair))
    ratios = [a / b for a, b in zip(times[True][args.warmup:], times[False][args.warmup:])]
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    print(f"median step: with DIP+ECAC {statistics.median(times[True][args.warmup:]):.3f} s, "
          f"plain {statistics.median(times[False][args.warmup:]):.3f} s; per-pair ratio "
          f"quartiles {q1:.3f} / {median:.3f} / {q3:.3f} ({args.pairs} pairs, "
          f"{args.resolution} px, decode {args.decode}, {args.device})")
    print(f"RESULT portraitbooth_dip_overhead_ratio={statistics.median(ratios):.3f} "
          f"goal<={GOAL}")


if __name__ == "__main__":
    main()
