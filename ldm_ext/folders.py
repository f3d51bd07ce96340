"""The files that make a folder a run, an export or a DeepSpeed checkpoint, which of them a
path names, and the weight names and shapes they declare in their headers. Imports nothing
heavy: command lines check their paths (and refuse weights of another run) with it before
torch loads, so a mistake stops in one line at once.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ldm_ext.cli import InputError, one_line

Shapes = dict[str, tuple[int, ...]]

RUN_CONFIG = "config.yaml"
TRAINABLE = "trainable.safetensors"
EXPORT_INDEX = "export.json"  # {"modules": {name: "diffusers" | "adapters"}, ...}
ADAPTERS = "adapters.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"  # an exported diffusers model's
ZERO_LATEST = "latest"  # DeepSpeed checkpoint folder: latest names <tag>/, which holds
ZERO_MODEL_STATES = "mp_rank_00_model_states.pt"  # the module state and the run state
EXPORT_KINDS = ("diffusers", "adapters")
# a module name: dotted attribute path (``unet.down_blocks.0.attn2.to_k``); a diffusers
# module is one plain name, its folder inside the export
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
FOLDER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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


def export_modules(folder: str | Path) -> dict[str, str]:
    """Module name -> kind of an export folder's ``export.json``. Names are dotted module
    paths and a diffusers module's name is its folder in the export: anything that could
    name a path elsewhere (``../x``, ``/abs/x``, ``a/b``) is refused, naming the file."""
    index = Path(folder) / EXPORT_INDEX
    try:
        modules = json.loads(index.read_text())["modules"]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{index}: not an export index ({one_line(str(err))})") from None
    if not isinstance(modules, dict):
        raise InputError(f"{index}: 'modules' must map module names to kinds")
    for name, kind in modules.items():
        pattern = FOLDER_NAME if kind == "diffusers" else MODULE_NAME
        if kind not in EXPORT_KINDS or not pattern.fullmatch(name):
            raise InputError(f"{index}: refused module {name[:80]!r}: {kind!r}; modules "
                             f"are plain names of kind {' or '.join(EXPORT_KINDS)}")
    return modules


def export_weight_files(folder: Path) -> list[tuple[str, Path]]:
    """(name prefix, safetensors file) of each weight file of an export folder, as
    ``weights.read_state`` names their tensors: the adapters' as they are, each diffusers
    model's under ``<module>.`` (names checked: ``export_modules``)."""
    modules = export_modules(folder)
    files = [("", folder / ADAPTERS)] if (folder / ADAPTERS).is_file() else []
    return files + [(f"{name}.", folder / name / DIFFUSERS_WEIGHTS)
                    for name, kind in modules.items() if kind == "diffusers"]


def safetensors_shapes(path: str | Path) -> Shapes:
    """Name -> shape of every tensor of a safetensors file, from its header (no tensor is
    read); an InputError naming the file when it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "numpy") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({one_line(str(err))})") \
            from None


def header_shapes(weights: Path) -> Shapes | None:
    """Name -> shape of trainable weights readable from headers alone (a safetensors file,
    an export folder); None for the others (``.ckpt`` files, DeepSpeed folders)."""
    if weights.is_dir() and (weights / EXPORT_INDEX).is_file():
        return {prefix + name: shape for prefix, path in export_weight_files(weights)
                for name, shape in safetensors_shapes(path).items()}
    if weights.is_file() and weights.suffix == ".safetensors":
        return safetensors_shapes(weights)
    return None
