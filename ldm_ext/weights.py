"""Trainable weights on disk: by name, as safetensors, strict on load.

Three sources hold the same flat ``{name: tensor}`` state: a run's
``trainable.safetensors``, a Lightning ``.ckpt`` of the module (its ``state_dict``) and an
export folder (``ldm_ext/export.py``: diffusers models as ``save_pretrained`` folders, the
other trainable parts in ``adapters.safetensors``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

EXPORT_INDEX = "export.json"  # {"modules": {name: "diffusers" | "adapters"}, ...}
ADAPTERS = "adapters.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def save(state: dict[str, torch.Tensor], path: str | Path,
         metadata: dict[str, str] | None = None) -> None:
    save_file(state, str(path), metadata=metadata)


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat trainable state of a ``.safetensors`` file, a ``.ckpt`` or an export."""
    path = Path(path)
    if path.is_dir():
        return _export_state(path)
    if path.suffix == ".ckpt":  # our own run's checkpoint: trusted, has non-tensors
        return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return load_file(str(path))


def _export_state(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / EXPORT_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: not an export folder (no {EXPORT_INDEX})")
    modules = json.loads(index.read_text())["modules"]
    state = load_file(str(folder / ADAPTERS)) if (folder / ADAPTERS).is_file() else {}
    for name, kind in modules.items():
        if kind == "diffusers":
            part = load_file(str(folder / name / DIFFUSERS_WEIGHTS))
            state.update({f"{name}.{k}": v for k, v in part.items()})
    return state


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
