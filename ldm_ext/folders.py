"""The files that make a folder a run, an export or a DeepSpeed checkpoint, and which of
them a path names. Imports nothing heavy: command lines check their paths with it before
torch loads, so a mistyped folder stops in one line at once.
"""
from __future__ import annotations

from pathlib import Path

from ldm_ext.cli import InputError

RUN_CONFIG = "config.yaml"
TRAINABLE = "trainable.safetensors"
EXPORT_INDEX = "export.json"  # {"modules": {name: "diffusers" | "adapters"}, ...}
ADAPTERS = "adapters.safetensors"
ZERO_LATEST = "latest"  # DeepSpeed checkpoint folder: latest names <tag>/, which holds
ZERO_MODEL_STATES = "mp_rank_00_model_states.pt"  # the module state and the run state


def is_zero_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint folder written by DeepSpeed (``last.ckpt/`` of a
    ``trainer.strategy=deepspeed`` run)."""
    return (Path(path) / ZERO_LATEST).is_file()


def run_folder(path: str | Path) -> tuple[Path, Path]:
    """(folder holding ``config.yaml``, weights to load) for a run folder, an export
    folder, or weights inside a run (``trainable.safetensors``, a ``.ckpt`` file or
    DeepSpeed checkpoint folder)."""
    path = Path(path)
    if path.is_dir() and not is_zero_checkpoint(path):
        if not (path / RUN_CONFIG).is_file():
            raise InputError(f"{path} is not a run or export folder (no {RUN_CONFIG})")
        return path, (path if (path / EXPORT_INDEX).is_file() else path / TRAINABLE)
    if not path.exists():
        raise InputError(f"{path}: no such run folder, export folder or weights file")
    run_dir = next((p for p in path.parents if (p / RUN_CONFIG).is_file()), None)
    if run_dir is None:
        raise InputError(f"{path}: no run folder ({RUN_CONFIG}) above this file")
    return run_dir, path
