"""Peak memory of one InstantFamily-shaped training step: ours (frozen parts in bf16,
gradient checkpointing) vs plain (fp32, no checkpointing), where the savings matter.

    python -m benchmarks.step_memory [--device cpu|cuda] [--width 64] [--batch 8]

The step is the paper's per-GPU batch, 8 images at 512² (64² latents), through a trainable
ControlNet into the frozen UNet, both with our attention processors and 4-face masks
(multiply mode, 77 text + 4 x 10 face tokens), MSE on the noise, backward, AdamW step.
The models, inputs and step are ``controlnet_step.py``'s (shared with ``memory_plan.py``):
SD1.5's shape with channel widths `width x (1, 2, 4, 4)`: SD1.5 is width 320; the default
64 fits the 24 GiB CPU machine and runs in a few minutes. Random weights: they do not
change the memory.

  plain  every weight fp32, no autocast, no gradient checkpointing;
  ours   the frozen UNet's weights in bf16, the step under bf16 autocast (Lightning's
         bf16-mixed), gradient checkpointing in the UNet and the ControlNet; the trainable
         ControlNet keeps fp32 weights, gradients and AdamW state, as the repo's base class
         keeps trainable parts.

Each variant runs in a fresh child process so neither sees the other's allocator. AdamW
state is allocated before the measured step, so the peak holds weights, gradients,
optimizer state and activations: what has to fit. On CUDA the peak is
`torch.cuda.max_memory_allocated`; on the CPU the peak resident memory sampled every 5 ms,
less the resident memory of the bare runtime (interpreter, torch, diffusers) measured
before any model is built; the absolute peaks are printed too. With `--device cuda` the
real-size SD1.5 step (width 320) is measured as well and printed in GiB.

Ends with ``RESULT step_memory_ratio=<ours/plain peak> goal<=0.6``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.controlnet_step import (MMAP_THRESHOLD, allocated_adamw, build_models,
                                        step_inputs, train_step)
from ldm_ext.host_memory import MemoryPeak, rss_bytes

GOAL = 0.6
SD15_WIDTH = 320
GIB = 2**30


def prepare(unet, controlnet, ours: bool):
    """Freeze the UNet (bf16 in ours), checkpointing in ours; AdamW over the ControlNet with
    its state allocated (a step on zero gradients), as after a first training step."""
    import torch

    unet.requires_grad_(False).eval()
    if ours:
        unet.to(torch.bfloat16)
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    return allocated_adamw(controlnet)


def child(ours: bool, device: str, width: int, batch: int) -> dict:
    """Build, prepare, then measure one step; memory in GiB."""
    import torch

    from benchmarks.timing import Stopwatch

    runtime = rss_bytes()
    unet, controlnet = build_models(width, device)
    optimizer = prepare(unet, controlnet, ours)
    inputs = step_inputs(batch, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with MemoryPeak(rss_bytes, interval=0.005) as rss:
        clock = Stopwatch(device)
        clock.start()
        train_step(unet, controlnet, optimizer, inputs, ours, device)
        seconds = clock.elapsed()
    if device == "cuda":
        peak = absolute = torch.cuda.max_memory_allocated()
    else:
        peak, absolute = rss.peak - runtime, rss.peak
    return {"peak_gib": peak / GIB, "absolute_gib": absolute / GIB, "seconds": seconds}


def run_child(ours: bool, device: str, width: int, batch: int) -> dict:
    """`child` in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.step_memory", "--child", "ours" if ours else "plain", "--device", device,
           "--width", str(width), "--batch", str(batch)]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root,
                         env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(device: str, width: int, batch: int) -> float:
    """Both variants at one width: a table, and ours/plain peak."""
    plain, ours = run_child(False, device, width, batch), run_child(True, device, width, batch)
    print(f"width {width} (SD1.5: {SD15_WIDTH}), batch {batch}, 64² latents, {device}")
    print(f"  {'variant':<8}{'peak GiB':>10}{'absolute GiB':>14}{'step s':>9}")
    for name, r in (("plain", plain), ("ours", ours)):
        print(f"  {name:<8}{r['peak_gib']:>10.2f}{r['absolute_gib']:>14.2f}"
              f"{r['seconds']:>9.1f}")
    return ours["peak_gib"] / plain["peak_gib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--width", type=int, default=64, help="SD1.5: 320")
    parser.add_argument("--batch", type=int, default=8, help="images per step (paper: 8)")
    parser.add_argument("--child", choices=["plain", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "ours", args.device, args.width, args.batch)))
        return
    ratio = compare(args.device, args.width, args.batch)
    if args.device == "cuda" and args.width != SD15_WIDTH:
        print(f"  real-size SD1.5 ratio {compare(args.device, SD15_WIDTH, args.batch):.3f}")
    print(f"RESULT step_memory_ratio={ratio:.3f} goal<={GOAL}")


if __name__ == "__main__":
    main()
