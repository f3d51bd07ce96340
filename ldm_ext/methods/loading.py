"""Build a method module from a config, or load a trained one from a run or export folder.

Every method is reached through ``ldm_ext/registry.py``; nothing here names one.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ldm_ext.config import load_config
from ldm_ext.folders import RUN_CONFIG, TRAINABLE, run_folder  # noqa: F401 (imported from here)
from ldm_ext.methods.base import IdentityMethod
from ldm_ext.registry import method_spec
from ldm_ext.seeding import seeded


def build_method(cfg) -> IdentityMethod:
    """Load the backbone and encoders a config names and wrap them in its method.

    Everything the build draws at random comes from the run's ``seed``: a frozen
    random-init part (``method.face_weights=random``, a projection made at load) is the
    same network in training, in every later load and in every process, so generation is
    a function of the weights, the inputs and the sampling seed. The caller's random
    state is left as it was."""
    with seeded(cfg.seed):
        return method_spec(cfg.method.name).module_class.from_config(cfg)


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
