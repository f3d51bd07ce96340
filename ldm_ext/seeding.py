"""Seeded random initialisation: what a build draws at random is a function of a seed.

Random-init parts that are never trained but still shape a result (a ``random`` face
encoder in a demo run, a ``random`` CLIP scorer) must come out the same in every process,
or two runs of the same command disagree (issue 23: CLIP-T 0.038 vs 0.098, other PNGs).
Builds run inside :func:`seeded`; the caller's random state is left as it was, so a
build changes nothing that is drawn after it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from ``seed`` inside the block (CPU and CUDA generators), restore after it."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
