"""Cost of one SeFi-IDE fitting step vs a bare textual-inversion step, and time to fit one id.

    python -m benchmarks.sefi_fit_step [--device cpu|cuda] [--pairs 20] [--size 512]

Both sides fit one 512² photo (the paper's size), batch 1, on the same random SD1.5-shaped
backbone (full size on CUDA, a fifth of its widths on the CPU) with the same VAE, noise,
text-encoder and UNet calls, backward and Adam step:

- ours: ``SeFiIDE.model_step`` (stage-token module, key and value conditions in one
  encoder call of 2 prompts, split K/V cross-attention, every cross-attention map kept and
  the detached y_r probe of the same queries, the face-wise attention loss) + Adam;
- bare: textual inversion with one token: the prompt encoded once with the token in place
  of ``V*`` (the same hook), the plain UNet, the noise MSE, backward, Adam on the token.

Method, for a shared, noisy machine: after warm-up, many short pairs are timed, each one
step of each side, who goes first alternating; the figure is the median of the per-pair
ratios (ours / bare), so a burst of load spoils a pair, not the figure; the quartiles are
printed beside it. On the CPU the steps run on one thread and are timed in process CPU
time, which other processes' load leaves alone (wall time on a busy 2-core machine
scattered the ratios over 0.7-1.4), with freed memory kept by the allocator (no page
faults after warm-up; ``timing.keep_freed_memory``); on CUDA, wall time between
synchronisations. The time to fit one identity is ``method.max_steps`` (1000, the paper's)
times ours' median step, on this model and device.

Ends with ``RESULT sefi_fit_step_ratio=<ours/bare> goal<=1.15``.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from benchmarks.timing import keep_freed_memory, timed
from ldm_ext.adapters.pseudo_words import encode
from ldm_ext.config import load_config
from ldm_ext.methods.sefi_ide import SeFiIDE
from ldm_ext.random_backbone import Widths, random_backbone

GOAL = 1.15
WARMUP = 2
FULL = dict(unet_channels=(320, 640, 1280, 1280), text_width=768, text_layers=12,
            text_heads=12, vae_channels=(128, 256, 512, 512))
FIFTH = dict(unet_channels=(64, 128, 256, 256), text_width=256, text_layers=4, text_heads=4,
             vae_channels=(32, 64, 64, 64))


def build(device: str, size: int) -> tuple[SeFiIDE, dict]:
    """The method on a random backbone (``FULL`` on CUDA, ``FIFTH`` on CPU) and one batch."""
    sizes = FULL if device == "cuda" else FIFTH
    backbone = random_backbone("sd15", Widths(**sizes))
    cfg = load_config("configs/experiment/sefi_ide_sd15.yaml",
                      [f"data.resolution={size}", f"method.width={sizes['text_width']}"])
    method = SeFiIDE(cfg, backbone).to(device).train()
    batch = {"pixel_values": torch.rand(1, 3, size, size, device=device) * 2 - 1,
             "caption": ["a photo of the face of V*"]}
    return method, batch


def ours_step(method: SeFiIDE, batch: dict, optimizer, seed: int) -> None:
    gen = torch.Generator(device=method.device).manual_seed(seed)
    method.model_step(batch, gen)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bare_step(method: SeFiIDE, batch: dict, token: torch.Tensor, optimizer, seed: int) -> None:
    """Textual inversion with one token: the same VAE, noise, encoder and UNet calls."""
    gen = torch.Generator(device=method.device).manual_seed(seed)
    latents = method.encode_latents(batch["pixel_values"], gen)
    noisy, t, target = method.noised_latents(latents, gen)
    hidden, _ = encode(method.backbone, batch["caption"], [token[None]], method.stand_in)
    pred = method.unet(noisy, t, encoder_hidden_states=hidden).sample
    F.mse_loss(pred.float(), target.float()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(method: SeFiIDE, batch: dict, pairs: int, device: str) -> tuple[list, list]:
    """(ours, bare) step seconds of ``pairs`` interleaved pairs after warm-up."""
    ours_opt = method.configure_optimizers()["optimizer"]
    token = method.stage_tokens.word.detach().clone().requires_grad_(True)
    bare_opt = torch.optim.Adam([token], lr=method.cfg.method.lr)
    ours, bare = [], []
    for i in range(WARMUP + pairs):
        sides = [("ours", lambda: ours_step(method, batch, ours_opt, i)),
                 ("bare", lambda: bare_step(method, batch, token, bare_opt, i))]
        times = {name: timed(fn, device) for name, fn in (sides if i % 2 else sides[::-1])}
        if i >= WARMUP:
            ours.append(times["ours"])
            bare.append(times["bare"])
    return ours, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--size", type=int, default=512, help="photo side (the paper's 512)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.device != "cuda":
        torch.set_num_threads(1)
        keep_freed_memory()
    method, batch = build(args.device, args.size)
    ours, bare = measure(method, batch, args.pairs, args.device)
    ratios = sorted(o / b for o, b in zip(ours, bare))
    q1, q3 = statistics.quantiles(ratios, n=4)[0::2]
    steps, step = method.cfg.trainer.max_steps, statistics.median(ours)
    model = "SD1.5 size" if args.device == "cuda" else "SD1.5 shape at 1/5 width"
    print(f"median step: ours {step:.3f} s, bare textual inversion {statistics.median(bare):.3f} s"
          f" ({len(ratios)} pairs, {model}, {args.size}², {args.device}); ratio quartiles "
          f"{q1:.3f}-{q3:.3f}")
    print(f"time to fit one identity ({steps} steps): {steps * step:.0f} s")
    print(f"RESULT sefi_fit_step_ratio={statistics.median(ratios):.3f} goal<={GOAL}")


if __name__ == "__main__":
    main()
