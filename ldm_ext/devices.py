"""Whether a CUDA GPU is there, asked without importing torch when the answer is plainly no.

The command lines check a device the user asked for (``trainer.accelerator=gpu``,
``generation.device=cuda``) before anything heavy loads. ``torch.cuda`` answers only once
torch is imported (seconds), so a machine that shows no GPU at all (no NVIDIA, WSL or ROCm
device node, or ``CUDA_VISIBLE_DEVICES`` hiding every device) is answered from the file
system; anywhere else torch itself is asked.
"""
from __future__ import annotations

import glob
import os
import sys

# device nodes of a GPU that torch.cuda can drive: NVIDIA, WSL2's GPU bridge, AMD ROCm
GPU_NODES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")


def gpu_hidden() -> bool:
    """True when this process can plainly see no CUDA device: ``CUDA_VISIBLE_DEVICES`` is
    empty or starts with an invalid index (-1), or this Linux machine has no GPU node."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.split(",")[0].strip() in ("", "-1"):
        return True
    return sys.platform.startswith("linux") and not any(glob.glob(p) for p in GPU_NODES)


def cuda_device_count() -> int:
    """CUDA GPUs torch sees: 0 at once when ``gpu_hidden``, else torch's count."""
    if gpu_hidden():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
