"""Peak memory of one SD1.5-size InstantFamily training step, with and without gradient
checkpointing (random weights, batch 1, 512² images = 64² latents).

Each variant runs in a fresh child process so neither sees the other's allocator state.
A first step allocates the AdamW state; the second, steady-state step is measured. On
CUDA the peak is ``torch.cuda.max_memory_allocated`` over that step; on the CPU it is the
process's peak resident memory sampled every 5 ms during it. The peak includes weights,
gradients and AdamW state (the whole footprint a researcher has to fit); what the step
adds on top of the memory held before it (activations + gradients) is printed beside it.

    python benchmarks/step_memory.py [--device cpu|cuda]

Ends with ``RESULT step_memory_ratio=<checkpointed/plain peak> goal<=0.7``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.7


class RssPeak:
    """Samples this process's resident memory in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def train_step(method, optimizer, batch: dict, gen) -> None:
    method.model_step(batch, gen)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def child(checkpointing: bool, device: str) -> dict:
    """Build the model, run one optimizer step, report memory in GiB."""
    import torch

    from datamodules.demo import random_batch
    from sd15_random import sd15_method  # benchmarks/ is on sys.path

    torch.manual_seed(0)
    method = sd15_method().to(device)
    method.set_gradient_checkpointing(checkpointing)
    method.train()
    optimizer = method.configure_optimizers()
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in random_batch(1, 512).items()}
    gen = torch.Generator(device=device).manual_seed(0)
    train_step(method, optimizer, batch, gen)  # allocates the AdamW state
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with RssPeak() as rss:
        base_rss = rss.peak
        start = time.perf_counter()
        train_step(method, optimizer, batch, gen)
        seconds = time.perf_counter() - start
    if device == "cuda":
        peak, base = torch.cuda.max_memory_allocated(), base
    else:
        peak, base = rss.peak, base_rss
    return {"peak_gib": peak / 2**30, "step_gib": (peak - base) / 2**30, "seconds": seconds}


def run_child(checkpointing: bool, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "ckpt" if checkpointing else "plain",
           "--device", device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=["plain", "ckpt"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "ckpt", args.device)))
        return
    plain, ckpt = run_child(False, args.device), run_child(True, args.device)
    print(f"{'variant':<14}{'peak GiB':>10}{'step adds GiB':>15}{'seconds':>10}")
    for name, r in (("plain", plain), ("checkpointed", ckpt)):
        print(f"{name:<14}{r['peak_gib']:>10.2f}{r['step_gib']:>15.2f}{r['seconds']:>10.1f}")
    print(f"step-only ratio (checkpointed/plain): {ckpt['step_gib'] / plain['step_gib']:.3f}")
    print(f"RESULT step_memory_ratio={ckpt['peak_gib'] / plain['peak_gib']:.3f} goal<={GOAL}")


if __name__ == "__main__":
    main()
