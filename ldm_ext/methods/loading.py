"""Build a method module from a config, or load a trained one from a run or export folder.

Every method is reached through ``ldm_ext/registry.py``; nothing here names one. Finding a
run's folder, config and weights (and refusing weights of another run) imports no torch;
only building the module does.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ldm_ext.cli import InputError
from ldm_ext.config_layers import load_yaml
from ldm_ext.config import load_config
from ldm_ext.folders import (EXPORT_INDEX, RUN_CONFIG, TRAINABLE, Shapes,  # noqa: F401
                             header_shapes, run_folder)  # (run_folder imported from here)
from ldm_ext.registry import method_spec

if TYPE_CHECKING:
    from ldm_ext.methods.base import IdentityMethod


def build_method(cfg) -> IdentityMethod:
    """Load the backbone and encoders a config names and wrap them in its method.

    Everything the build draws at random comes from the run's ``seed``: a frozen
    random-init part (``method.face_weights=random``, a projection made at load) is the
    same network in training, in every later load and in every process, so generation is
    a function of the weights, the inputs and the sampling seed. The caller's random
    state is left as it was."""
    from ldm_ext.seeding import seeded

    with seeded(cfg.seed):
        return method_spec(cfg.method.name).module_class.from_config(cfg)


def run_config(run_dir: Path):
    """The config a trained run is loaded with: its saved one (read literally: it may be a
    stranger's), with the fields only training reads (``MethodConfig.TRAINING_ONLY``) set
    to their loading values."""
    cfg = load_config(run_dir / RUN_CONFIG, literal=True)
    for key, value in method_spec(cfg.method.name).config_class.TRAINING_ONLY.items():
        cfg.method[key] = value
    return cfg


def reference_shapes(run_dir: Path, weights: Path) -> Shapes | None:
    """Name -> shape of the weights the run folder itself holds (its
    ``trainable.safetensors``, or the export), which any other weights given for the run
    must match; None when ``weights`` are those or the folder holds none."""
    own = run_dir if (run_dir / EXPORT_INDEX).is_file() else run_dir / TRAINABLE
    if weights.resolve() == own.resolve() or not own.exists():
        return None
    return header_shapes(own)


def check_weights(run_dir: Path, weights: Path, shapes: Shapes | None) -> None:
    """Weights ``shapes`` (name -> shape) given for the run in ``run_dir`` are refused
    when they differ from the run's own in any name or shape: weights of another method
    or another run's config, caught before the model is built (they would fail mid-load)."""
    reference = reference_shapes(run_dir, weights)
    if shapes is None or reference is None or shapes == reference:
        return
    method = load_config(run_dir / RUN_CONFIG, literal=True).method.name
    theirs, ours = _modules(shapes), _modules(reference)
    if theirs != ours:
        detail = f"they hold {', '.join(theirs)}; the run trains {', '.join(ours)}"
    else:
        names = sorted(k for k in shapes.keys() | reference.keys()
                       if shapes.get(k) != reference.get(k))
        detail = f"{len(names)} tensors differ in name or shape, e.g. {names[0]}"
    raise InputError(f"--run {weights}: not weights of the {method} run {run_dir} "
                     f"({detail}); give the run folder they were trained in")


def _modules(shapes: Shapes) -> list[str]:
    """The trainable modules weights belong to: their names' first parts."""
    return sorted({name.split(".", 1)[0] for name in shapes})


def load_run(path: str | Path, weights: str | Path | None = None) -> IdentityMethod:
    """The method of a run or export folder (or of a weights file inside a run) with its
    trainable weights (``weights`` overrides which), in eval mode. Weights of another
    method or run are an InputError, raised before the model is built."""
    from ldm_ext import weights as weight_files

    run_dir, found = run_folder(path)
    found = Path(weights or found)
    state = weight_files.read_state(found)
    check_weights(run_dir, found, {k: tuple(v.shape) for k, v in state.items()})
    method = build_method(run_config(run_dir))
    try:
        method.load_trainable(found, state)
    except KeyError as err:  # no reference in the run folder to check against
        raise InputError(f"--run {found}: not weights of this {method.cfg.method.name} run "
                         f"({err.args[0]})") from None
    return method.eval()


def saved_config(run_dir: Path):
    """The resolved config a run folder was started with, or None; read as written (a
    ``${...}`` in it stays text: ``config_layers.as_written``)."""
    path = run_dir / RUN_CONFIG
    return load_yaml(path, literal=True) if path.is_file() else None
