"""Putting the processors on a diffusers model and finding their trainable parts.

Installed with `model.set_attn_processor(...)` on a `UNet2DConditionModel` or
`ControlNetModel`; per-batch inputs then arrive as `cross_attention_kwargs={"ctx": ...}`.
"""
from __future__ import annotations

import torch
from torch import nn

from ldm_ext.attention.decoupled import DecoupledAttnProcessor
from ldm_ext.attention.masked_text import MaskedTextAttnProcessor


def _decoupled_for(layer, name: str, image_dim: int | None, init_from_text: bool):
    """A DecoupledAttnProcessor sized, placed and (optionally) initialised from `layer`."""
    to_k, to_v = layer.to_k, layer.to_v
    proc = DecoupledAttnProcessor(name, to_k.out_features, to_k.in_features, image_dim)
    proc.to(device=to_k.weight.device, dtype=to_k.weight.dtype)
    if init_from_text and proc.to_k_ip.in_features == to_k.in_features:
        with torch.no_grad():
            proc.to_k_ip.weight.copy_(to_k.weight)
            proc.to_v_ip.weight.copy_(to_v.weight)
    return proc


def install_processors(model, decoupled: bool = False, image_dim: int | None = None,
                       init_from_text: bool = True, prefix: str = "") -> dict[str, object]:
    """Install MaskedTextAttnProcessor on every layer (or DecoupledAttnProcessor on cross-attention
    layers when decoupled=True; new to_k_ip/to_v_ip copy the layer's to_k/to_v when the
    dims match and init_from_text), via model.set_attn_processor(full dict built from
    model.attn_processors). Returns the dict. Works for UNet2DConditionModel and ControlNetModel.

    A processor's name is its layer path (the `attn_processors` key without ".processor"),
    preceded by `prefix`; give the ControlNet a prefix (e.g. "controlnet.") when one store
    records layers of both it and the UNet, whose layer paths coincide.
    """
    processors: dict[str, object] = {}
    for key in model.attn_processors:
        path = key.removesuffix(".processor")
        layer = model.get_submodule(path)
        if decoupled and layer.is_cross_attention:
            processors[key] = _decoupled_for(layer, prefix + path, image_dim, init_from_text)
        else:
            processors[key] = MaskedTextAttnProcessor(prefix + path)
    model.set_attn_processor(dict(processors))  # it pops entries from the dict it is given
    return processors


def decoupled_modules(model) -> nn.ModuleDict:
    """The trainable IP K/V projections by layer name ("." -> "_", as ModuleDict keys
    forbid dots): save/load them by name, e.g. `decoupled_modules(unet).state_dict()`."""
    return nn.ModuleDict({
        proc.name.replace(".", "_"): proc
        for proc in model.attn_processors.values() if isinstance(proc, DecoupledAttnProcessor)
    })
