"""Peak memory of one InstantFamily-shaped training step: ours (frozen parts in bf16,
gradient checkpointing) vs plain (fp32, no checkpointing), where the savings matter.

    python benchmarks/step_memory.py [--device cpu|cuda] [--width 64] [--batch 8]

The step is the paper's per-GPU batch, 8 images at 512² (64² latents), through a trainable
ControlNet into the frozen UNet, both with our attention processors and 4-face masks
(multiply mode, 77 text + 4 x 10 face tokens), MSE on the noise, backward, AdamW step.
The models have SD1.5's shape (`UNet2DConditionModel` down/up blocks, 2 layers per block,
8 heads at every level, 768-wide text; `ControlNetModel.from_unet`) with channel widths
`width x (1, 2, 4, 4)`: SD1.5 is width 320; the default 64 fits the 24 GiB CPU machine
and runs in a few minutes. Random weights: they do not change the memory.

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
import threading
import time
from pathlib import Path

GOAL = 0.6
SD15_WIDTH = 320
GIB = 2**30
# glibc serves allocations above this size with mmap and unmaps them when freed, so the
# resident memory follows the tensors alive, as CUDA's allocated bytes do (glibc's default
# threshold grows with use up to 32 MiB and then keeps freed tensors resident).
MMAP_THRESHOLD = 1 << 20


class RssPeak:
    """Samples this process's resident memory in a thread; `peak` in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "RssPeak":
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def build_models(width: int, device: str):
    """SD1.5-shaped UNet and its ControlNet at `width`, our processors installed."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from ldm_ext.attention import install_processors

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=tuple(width * m for m in (1, 2, 4, 4)),
                                cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    controlnet = ControlNetModel.from_unet(unet)
    install_processors(unet)
    install_processors(controlnet, prefix="controlnet.")
    return unet.to(device), controlnet.to(device)


def step_inputs(batch: int, device: str) -> dict:
    """One batch: noisy latents (B, 4, 64, 64), timesteps, noise target, embedding stack
    (B, 117, 768), pose image (B, 3, 512, 512) and the 4 faces' attention context."""
    import torch

    from ldm_ext.attention import AttentionContext, TokenLayout, build_face_masks

    layout = TokenLayout(num_text=77, num_slots=4, tokens_per_face=10)
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.05, 0.10, 0.25, 0.35], [0.30, 0.15, 0.50, 0.40],
                          [0.55, 0.10, 0.75, 0.35], [0.78, 0.20, 0.98, 0.45]])  # (N, 4) xyxy
    tensors = {"noisy": torch.randn(batch, 4, 64, 64, generator=gen),
               "target": torch.randn(batch, 4, 64, 64, generator=gen),
               "timesteps": torch.randint(0, 1000, (batch,), generator=gen),
               "stack": torch.randn(batch, layout.total, 768, generator=gen),
               "control": torch.rand(batch, 3, 512, 512, generator=gen)}
    masks = build_face_masks(boxes.expand(batch, -1, -1).to(device),
                             torch.ones(batch, 4, dtype=torch.bool, device=device), layout,
                             (64, 64))
    return {**{k: v.to(device) for k, v in tensors.items()},
            "ctx": AttentionContext(face_masks=masks, latent_hw=(64, 64))}


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


def allocated_adamw(controlnet):
    """AdamW over the ControlNet (put in train mode) with its state allocated, as after a
    first step."""
    import torch

    controlnet.train()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    for param in controlnet.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def train_step(unet, controlnet, optimizer, inputs: dict, ours: bool, device: str) -> None:
    """ControlNet -> UNet -> noise MSE -> backward -> AdamW step (bf16 autocast in ours)."""
    import torch
    import torch.nn.functional as F

    kwargs = {"encoder_hidden_states": inputs["stack"],
              "cross_attention_kwargs": {"ctx": inputs["ctx"]}}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=ours):
        down, mid = controlnet(inputs["noisy"], inputs["timesteps"],
                               controlnet_cond=inputs["control"], return_dict=False, **kwargs)
        pred = unet(inputs["noisy"], inputs["timesteps"], down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, **kwargs).sample
    F.mse_loss(pred.float(), inputs["target"]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def child(ours: bool, device: str, width: int, batch: int) -> dict:
    """Build, prepare, then measure one step; memory in GiB."""
    import psutil
    import torch

    runtime = psutil.Process().memory_info().rss
    unet, controlnet = build_models(width, device)
    optimizer = prepare(unet, controlnet, ours)
    inputs = step_inputs(batch, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        start = time.perf_counter()
        train_step(unet, controlnet, optimizer, inputs, ours, device)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if device == "cuda":
        peak = absolute = torch.cuda.max_memory_allocated()
    else:
        peak, absolute = rss.peak - runtime, rss.peak
    return {"peak_gib": peak / GIB, "absolute_gib": absolute / GIB, "seconds": seconds}


def run_child(ours: bool, device: str, width: int, batch: int) -> dict:
    """`child` in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--child", "ours" if ours else "plain", "--device", device,
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
