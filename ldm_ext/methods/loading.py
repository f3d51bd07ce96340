"""Build a method module from a config, or load a trained one from a run or export folder.

Every method is reached through ``ldm_ext/registry.py``; nothing here names one.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ldm_ext.cli import InputError
from ldm_ext.config import load_config
from ldm_ext.methods.base import IdentityMethod
from ldm_ext.registry import method_spec
from ldm_ext.weights import EXPORT_INDEX, is_zero_checkpoint

RUN_CONFIG = "config.yaml"
TRAINABLE = "trainable.safetensors"


def build_method(cfg) -> IdentityMethod:
    """Load the backbone and encoders a config names and wrap them in its method."""
    return method_spec(cfg.method.name).module_class.from_config(cfg)


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


def load_run(path: str | Path, weights: str | Path | None = None) -> IdentityMethod:
    """The method of a run or export folder (or of a weights file inside a run) with its
    trainable weights (``weights`` overrides which), in eval mode."""
    run_dir, found = run_folder(path)
    cfg = load_config(run_dir / RUN_CONFIG)
    for key, value in method_spec(cfg.method.name).config_class.TRAINING_ONLY.items():
        cfg.method[key] = value
    method = build_method(cfg)
    method.load_trainable(weights or found)
    return method.eval()


def saved_config(run_dir: Path):
    """The resolved config a run folder was started with, or None."""
    path = run_dir / RUN_CONFIG
    return OmegaConf.load(path) if path.is_file() else None
