"""One timer for the benchmarks: wall clock with CUDA synchronised, or on the CPU this
process's CPU time, which other processes on a shared machine do not inflate."""
from __future__ import annotations

import time
from typing import Callable

import torch


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds of ``fn()`` on ``device`` ("cuda": synchronised wall clock; else CPU time)."""
    if device != "cuda":
        start = time.process_time()
        fn()
        return time.process_time() - start
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start
