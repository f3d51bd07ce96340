"""Trainable weights on disk: by name, as safetensors, strict on load.

Four sources hold the same flat ``{name: tensor}`` state: a run's
``trainable.safetensors``, a Lightning ``.ckpt`` of the module (its ``state_dict``), a
DeepSpeed ZeRO checkpoint folder (``ldm_ext/strategy.py``; rank 0's module state) and an
export folder (``ldm_ext/export.py``: diffusers models as ``save_pretrained`` folders, the
other trainable parts in ``adapters.safetensors``).

Checkpoints may come from strangers, so nothing here unpickles objects: ``.ckpt`` files are
read with ``torch.load(weights_only=True)`` (tensors, containers and numbers only), which
is all our Lightning checkpoints hold (``methods/base.py`` ``on_save_checkpoint``); a
DeepSpeed folder is checked the same way, file by file, before DeepSpeed (which unpickles)
resumes from it (``check_zero_folder``); an export's module names are plain names, never
paths (``folders.export_modules``).
"""
from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from ldm_ext.cli import UserError, one_line
from ldm_ext.folders import (EXPORT_INDEX, ZERO_LATEST,  # noqa: F401 (re-exported)
                             ZERO_MODEL_STATES, export_weight_files, is_zero_checkpoint)

ZERO_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a folder name, never "..", "/x"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read safely or holds no trainable state; names the file."""


def save(state: dict[str, torch.Tensor], path: str | Path,
         metadata: dict[str, str] | None = None) -> None:
    save_file(state, str(path), metadata=metadata)


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat trainable state of a ``.safetensors`` file, a ``.ckpt`` or an export."""
    path = Path(path)
    if is_zero_checkpoint(path):
        return _zero_state(path)
    if path.is_dir():
        return _export_state(path)
    if path.suffix == ".ckpt":
        checkpoint = load_checkpoint(path, map_location="cpu")
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
        return checkpoint["state_dict"]
    return load_file(str(path))


def load_checkpoint(path: str | Path, map_location: Any = "cpu", allowed: Sequence[type] = (),
                    mmap: bool = False) -> Any:
    """``torch.load`` that never runs code from the file (``weights_only=True``, explicit so
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off); a file that needs more
    (pickled objects, possibly a payload) or is no torch file at all is refused with one
    line naming it. ``allowed``: plain data classes accepted besides tensors and
    containers (``torch.serialization.safe_globals``); ``mmap``: map the tensor data
    instead of reading it (a check of what a file holds costs no memory)."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(f"{path}: not a checkpoint torch can read "
                                  f"({one_line(str(err))[:120]})") from None
        raise CheckpointError(
            f"{path}: refused, it holds pickled objects ({found.group(1)}) that weights-only "
            "loading does not allow; only plain tensors and containers are read from checkpoints"
        ) from None
    except (RuntimeError, EOFError) as err:  # truncated, not a zip, not torch's format
        raise CheckpointError(f"{path}: not a readable checkpoint "
                              f"({one_line(str(err))[:120] or type(err).__name__})") from None


def zero_tag_folder(folder: str | Path) -> Path:
    """The step folder a DeepSpeed checkpoint's ``latest`` names: a plain folder name, so
    a ``latest`` of ``../elsewhere`` or ``/abs`` never points a resume outside ``folder``."""
    folder = Path(folder)
    tag = (folder / ZERO_LATEST).read_text().strip()
    if not ZERO_TAG.fullmatch(tag):
        raise CheckpointError(f"{folder}: refused, {ZERO_LATEST} names {tag[:80]!r}, which "
                              "is not a folder name inside the checkpoint")
    return folder / tag


def check_zero_folder(folder: str | Path, allowed: Sequence[type] = ()) -> None:
    """Refuse a DeepSpeed checkpoint folder any of whose step files (everything DeepSpeed
    reads on resume) needs more than weights-only loading: DeepSpeed's checkpoint engine
    unpickles them in full (``weights_only=False``), so this runs before it. ``allowed``:
    the plain classes DeepSpeed itself stores (``strategy.zero_state_classes``). Tensor
    data is memory-mapped, not read: the check costs a fraction of the resume."""
    tag = zero_tag_folder(folder)
    if not tag.is_dir():
        raise CheckpointError(f"{folder}: DeepSpeed checkpoint without its {tag.name}/ folder "
                              "(an unfinished save?)")
    for path in sorted(tag.iterdir()):
        if path.is_file():
            load_checkpoint(path, allowed=allowed, mmap=True)


def _zero_state(folder: Path) -> dict[str, torch.Tensor]:
    """The trainable weights of a DeepSpeed ZeRO stage 1/2 checkpoint, read weights-only
    and without DeepSpeed installed. Those stages shard the optimizer state and gradients,
    never the module, so rank 0's module state holds every trainable weight whole (and
    nothing frozen: ``strategy.TrainableZeroStrategy``), in fp32 (mixed precision is
    autocast there), equal to the fp32 master copies in the optimizer shards that
    DeepSpeed's own ``zero_to_fp32.py`` would gather (unpickling them)."""
    states_file = zero_tag_folder(folder) / ZERO_MODEL_STATES
    if not states_file.is_file():
        raise CheckpointError(f"{folder}: DeepSpeed checkpoint without {states_file.name} "
                              "(an unfinished save?)")
    states = load_checkpoint(states_file, map_location="cpu")
    stage = states.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise CheckpointError(f"{folder}: ZeRO stage 3 partitions the weights; consolidate "
                              "them first with the installed DeepSpeed (not the folder's own "
                              f"copy of the script): python -m deepspeed.utils.zero_to_fp32 "
                              f"{folder} OUT_DIR --safe_serialization")
    return {name: tensor.float() for name, tensor in states["module"].items()}


def _export_state(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / EXPORT_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: not an export folder (no {EXPORT_INDEX})")
    return {prefix + name: tensor for prefix, path in export_weight_files(folder)
            for name, tensor in load_file(str(path)).items()}


def load_into(params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor],
              source: str | Path) -> None:
    """Copy ``state`` into ``params``; a missing or unexpected name is an error naming
    the first few of each and the source."""
    missing, unexpected = params.keys() - state.keys(), state.keys() - params.keys()
    if missing or unexpected:
        raise KeyError(f"{source}: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of names, dtypes, shapes and bytes of ``state`` in name order: one value
    for the same weights as loaded, whichever file held them (safetensors, ``.ckpt``,
    export). Binds an eval's results folder to the weights that made it."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(state[name].shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()
