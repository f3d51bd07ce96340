"""Build a method module from a config, or from a finished run folder."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ldm_ext.backbone import load_backbone
from ldm_ext.config import load_config
from ldm_ext.methods.base import IdentityMethod

RUN_CONFIG = "config.yaml"
TRAINABLE = "trainable.safetensors"


def build_method(cfg) -> IdentityMethod:
    """Load the backbone and encoders a config names and wrap them in its method."""
    name = cfg.method.name
    if name == "instantfamily":
        from ldm_ext.face import build_face_encoder
        from ldm_ext.methods.instantfamily import InstantFamily

        encoder = build_face_encoder(cfg.method.face_encoder, weights=cfg.method.face_weights)
        return InstantFamily(cfg, load_backbone(cfg.model), encoder)
    raise ValueError(f"no module for method {name!r}")


def load_run(run_dir: str | Path, weights: str | Path | None = None) -> IdentityMethod:
    """The method of a run folder with its trainable weights, in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {RUN_CONFIG})")
    cfg = load_config(run_dir / RUN_CONFIG)
    method = build_method(cfg)
    method.load_trainable(weights or run_dir / TRAINABLE)
    return method.eval()


def saved_config(run_dir: Path):
    """The resolved config a run folder was started with, or None."""
    path = run_dir / RUN_CONFIG
    return OmegaConf.load(path) if path.is_file() else None
