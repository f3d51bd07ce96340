"""Fit one identity from one photo: ``python -m ldm_ext.fit --photo alice.jpg --name alice``.

For per-identity methods, whose experiment configs read one photo (``data.kind:
single_image``; SeFi-IDE's ``configs/experiment/sefi_ide_*.yaml``, the SD1.5 paper recipe by
default). The fit is a training run in ``<output_dir>/<name>/`` (``ldm_ext.training``: resolved
config, resumable checkpoints, a progress bar, sample grid at the end) whose
``trainable.safetensors`` is the identity file: the trained weights by name, with the
method's metadata (SeFi-IDE: module sizes and config). Running the same command again
resumes an interrupted fit and returns a finished one at once::

    python -m ldm_ext.fit --photo alice.jpg --name alice [--config X.yaml] [key=value ...]
    python -m ldm_ext.generate --run runs/alice --prompt "a photo of V* on the beach"

The photo and the config are checked before anything heavy loads and before the run
folder is made (a missing, truncated or unreadable photo: one line, exit 2). A photo in
which no face is found is fitted all the same, with a warning: SeFi-IDE's face-wise
attention loss (Eq. 4) compares attention maps of "the face of V*" and "the face of
person" and needs no detected face, so the fit runs, but it learns whatever the photo
shows. A detector's miss (a small, turned or drawn face) is no reason to refuse a fit.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ldm_ext.cli import ArgumentParser, open_image, run_training_cli
from ldm_ext.config_layers import CONFIG_ROOT

DEFAULT_CONFIG = str(CONFIG_ROOT / "experiment" / "sefi_ide_sd15.yaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", required=True, help="one photo of the identity")
    parser.add_argument("--name", help="run folder name (default: the photo's file stem)")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="experiment YAML (default: configs/experiment/sefi_ide_sd15.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trainer.max_steps=500")
    return parser.parse_args(argv)


def fit_config(config: str | Path, photo: str | Path, name: str,
               overrides: list[str] | None = None, output_dir: str | Path | None = None,
               literal: bool = False):
    """The checked config of fitting ``photo`` as run ``name`` with experiment ``config``
    (an experiment YAML or, ``literal``, a run's ``config.yaml``: never resolved). Photo,
    name and folder are set after parsing, so a name such as "000001" stays a string. The
    photo must decode (a truncated file is an ``InputError`` naming it); nothing heavy is
    imported."""
    from ldm_ext.config import ConfigError, load_config
    from ldm_ext.training_checks import check_config

    cfg = load_config(config, overrides, literal)
    if cfg.data.kind != "single_image":
        raise ConfigError(f"{config}: fitting takes a per-identity method's config "
                          f"(data.kind=single_image), not data.kind={cfg.data.kind}")
    open_image(photo, "photo")
    cfg.data.image, cfg.name = str(photo), str(name)
    cfg.logger.job_type = "fit"  # the wandb run says it is a fit, not a training
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    check_config(cfg)
    return cfg


def finished_identity(cfg) -> Path | None:
    """The identity file of a fit of this photo and recipe that reached
    ``trainer.max_steps``, else None. A folder fitted with another photo, model, method or
    seed is not reused: training then refuses it, naming what differs."""
    from omegaconf import OmegaConf
    from safetensors import safe_open

    from ldm_ext.methods.loading import TRAINABLE, saved_config
    from ldm_ext.training import RECIPE

    path = Path(cfg.output_dir) / cfg.name / TRAINABLE
    previous = saved_config(path.parent)
    if not path.is_file() or previous is None or any(
            OmegaConf.select(previous, g) != OmegaConf.select(cfg, g) for g in RECIPE):
        return None
    with safe_open(str(path), "pt") as handle:
        step = int((handle.metadata() or {}).get("global_step", -1))
    return path if step >= cfg.trainer.max_steps else None


def no_face_warning(photo: str | Path) -> str | None:
    """What to tell the user when MTCNN finds no face in ``photo``, else None. The fit goes
    on (module doc): the face-wise loss then attends to no face, and ``V*`` learns the
    photo's subject, whatever it is."""
    from ldm_ext.face import build_face_detector

    if len(build_face_detector("mtcnn").detect(open_image(photo, "photo"))):
        return None
    return (f"no face found in {photo} (MTCNN): the face-wise attention loss has no face "
            "to attend to, so V* learns whatever the photo shows; fitting anyway")


def fit_identity(cfg) -> Path:
    """Fit (or resume, or reuse) the identity of a ``fit_config``; its identity file."""
    from ldm_ext import training
    from ldm_ext.methods.loading import TRAINABLE

    done = finished_identity(cfg)
    if done is not None:
        print(f"{cfg.name}: already fitted ({done})", file=sys.stderr)
        return done
    warning = no_face_warning(cfg.data.image)
    if warning:
        print(f"{cfg.name}: warning: {warning}", file=sys.stderr)
    start = time.perf_counter()
    identity = training.run(cfg) / TRAINABLE
    print(f"{cfg.name}: fitted in {time.perf_counter() - start:.0f} s -> {identity}",
          file=sys.stderr)
    return identity


def fit(argv: list[str] | None) -> int:
    """Parse, check the config (before any weights load), fit."""
    args = parse_args(argv)
    cfg = fit_config(args.config, args.photo, args.name or Path(args.photo).stem,
                     args.overrides)
    from ldm_ext.run_summary import print_summary

    identity = fit_identity(cfg)
    print_summary(identity.parent, f"fitted {cfg.name}", {
        "identity file": f"{identity} (the trainable weights)",
        "generate": f"python -m ldm_ext.generate --run {identity.parent} "
                    '--prompt "a photo of V*"'})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 fitted; 2 a config or input mistake, told in one line; 3 a non-finite
    loss stopped the fit (the last good checkpoint stays)."""
    return run_training_cli(fit, argv, prog="fit")


if __name__ == "__main__":
    sys.exit(main())
