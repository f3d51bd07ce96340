"""This process's memory on the CPU, and the peak of a reading over a stretch of work.

- ``heap_bytes``: what ``malloc`` holds in use (glibc ``mallinfo2``), where a CPU's tensors
  live; unlike resident bytes it grows when work reuses memory the allocator kept;
- ``resident_bytes``: resident plus swapped bytes (Linux ``/proc/self/status``);
- ``rss_bytes``: resident bytes (psutil, any platform);
- ``MemoryPeak``: a daemon thread polling one of them; the training callback
  ``StepMemory`` and the step-memory benchmarks share it.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Callable

PROC_STATUS = Path("/proc/self/status")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's ``mallinfo2`` (2.33+), or None (another C library)."""
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


MALLINFO2 = _mallinfo2()


def heap_bytes() -> int:
    """Bytes this process's ``malloc`` holds in use, in all arenas and mmapped chunks."""
    info = MALLINFO2()
    return info.uordblks + info.hblkhd


def resident_bytes() -> int:
    """This process's resident plus swapped bytes (Linux ``/proc/self/status``)."""
    fields = dict(line.split(":", 1) for line in PROC_STATUS.read_text().splitlines())
    return sum(int(fields.get(name, "0 kB").split()[0]) * 1024 for name in ("VmRSS", "VmSwap"))


def rss_bytes() -> int:
    """This process's resident bytes (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss


def host_reader() -> Callable[[], int] | None:
    """The reading a step's CPU memory is best told by: ``heap_bytes`` with glibc, else
    ``resident_bytes`` on Linux, else None."""
    if MALLINFO2 is not None:
        return heap_bytes
    return resident_bytes if PROC_STATUS.is_file() else None


class MemoryPeak:
    """``peak``: the most ``read()`` returned from construction until ``stop()`` (or the
    end of a ``with`` block), polled every ``interval`` seconds by a daemon thread."""

    def __init__(self, read: Callable[[], int], interval: float = 0.02) -> None:
        self.read = read
        self.base = self.peak = read()
        self.interval, self.done = interval, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, self.read())

    def stop(self) -> int:
        """Stop polling; how far the peak rose above the first reading."""
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.read())
        return self.peak - self.base

    def __enter__(self) -> "MemoryPeak":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
