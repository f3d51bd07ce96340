"""The benchmarks' clocks, one place for how a step or a call is timed.

- ``timed``: one call, in this process's CPU time on the CPU (other processes on a shared
  machine do not inflate it) or synchronised wall clock on CUDA;
- ``Stopwatch``: wall clock from a start to any later point, CUDA synchronised at both,
  for what is not one call in this process (a training loop's body, Lightning's batch
  hooks, worker processes and subprocesses, which this process's CPU time leaves out);
- ``lightning_steps``: ``trainer.fit`` with a ``Stopwatch`` per optimizer step;
- ``keep_freed_memory``: glibc keeps freed memory, so timed calls do not page-fault.
"""
from __future__ import annotations

import ctypes
import time
from typing import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader


def sync(device: str) -> None:
    """Wait for the queued CUDA work (nothing to wait for elsewhere)."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds of ``fn()`` on ``device`` ("cuda": synchronised wall clock; else CPU time)."""
    if device != "cuda":
        start = time.process_time()
        fn()
        return time.process_time() - start
    clock = Stopwatch(device)
    clock.start()
    fn()
    return clock.elapsed()


class Stopwatch:
    """Wall seconds from ``start()`` to each ``elapsed()``, the device's queued work waited
    for at both ends."""

    def __init__(self, device: str) -> None:
        self.device, self._start = device, 0.0

    def start(self) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        sync(self.device)
        return time.perf_counter() - self._start


class StepTimer(pl.Callback):
    """Wall time of every optimizer step, measured between batch start and end hooks."""

    def __init__(self, device: str) -> None:
        self.clock, self.times = Stopwatch(device), []

    def on_train_batch_start(self, *args) -> None:
        self.clock.start()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(self.clock.elapsed())


def lightning_steps(method: pl.LightningModule, batch: dict, steps: int,
                    device: str) -> list[float]:
    """Seconds of each of ``steps`` training steps of ``trainer.fit`` on ``batch`` (data
    loading excluded; no logger, checkpoints, progress bar or sanity check; clipping 1.0)."""
    timer = StepTimer(device)
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                         max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0, gradient_clip_val=1.0)
    trainer.fit(method, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return timer.times


def keep_freed_memory() -> None:
    """glibc: serve allocations up to 32 MiB from the heap and never hand freed memory back
    to the kernel, so that after warm-up the timed calls page-fault no more (page faults
    took ~10 % of attention_overhead's CPU time, varying from run to run and side to side)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: leave the allocator as it is
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
