"""ldm_ext/host_memory.py: the CPU readings and the thread that keeps their peak, shared by
the ``StepMemory`` callback and the step-memory benchmarks."""
from __future__ import annotations

import time

import numpy as np

from ldm_ext import host_memory


def test_memory_peak_sees_memory_taken_and_given_back_between_its_reads():
    """A 256 MiB block written and freed while the thread polls: the peak holds it, with
    the bytes malloc holds in use as the CPU reader (glibc), whatever the allocator kept
    from earlier tests, which resident bytes would not show."""
    from callbacks import monitors

    assert monitors.HOST_READER is host_memory.heap_bytes  # glibc's mallinfo2 on Linux
    watch = host_memory.MemoryPeak(monitors.HOST_READER, interval=0.005)
    block = np.ones(2**28, dtype=np.uint8)
    time.sleep(0.1)
    del block
    time.sleep(0.05)
    taken = watch.stop()
    assert 2**28 * 0.99 < taken < 2**28 * 1.1
    assert not watch.thread.is_alive()


def test_as_a_block_it_keeps_the_absolute_peak_of_its_reading():
    """As the benchmarks use it: ``peak`` is the reading's most, in its own units."""
    readings = iter([5, 9, 7] + [6] * 1000)
    with host_memory.MemoryPeak(lambda: next(readings), interval=0.001) as peak:
        time.sleep(0.05)
    assert peak.peak == 9 and peak.base == 5
    assert not peak.thread.is_alive()
