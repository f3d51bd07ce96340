"""The benchmarks' clocks, one place for how a step or a call is timed.

- ``timed``: one call, in this process's CPU time on the CPU (other processes on a shared
  machine do not inflate it) or synchronised wall clock on CUDA;
- ``Stopwatch``: wall clock from a start to any later point, CUDA synchronised at both,
  for what is not one call in this process (a training loop's body, Lightning's batch
  hooks, worker processes and subprocesses, which this process's CPU time leaves out);
- ``keep_freed_memory``: glibc keeps freed memory, so timed calls do not page-fault.

Lightning's steps are timed by ``lightning_timing.py`` with these clocks; this module
imports nothing but torch, so a benchmark measuring resident memory (``step_memory.py``)
can use it without loading Lightning.
"""
from __future__ import annotations

import ctypes
import time
from typing import Callable

import torch


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
