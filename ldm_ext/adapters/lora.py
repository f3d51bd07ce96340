"""LoRA on attention projections through ``peft`` (StoryMaker Eq. 8: W + ΔW, ΔW = B A).

``lora_alpha`` equals the rank, so ΔW is applied at scale 1 exactly as the released
IP-Adapter-FaceID / StoryMaker LoRA layers (``LoRALinearLayer`` without a network alpha);
``lora_scale`` rescales it at inference (released default 0.8).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

ADAPTER = "default"
# the LoraConfig fields that define the layers, as diffusers' LoRA metadata: the whole
# ``to_dict()`` would also carry fields of this peft version that an older peft refuses
LAYOUT_FIELDS = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_dora",
                 "use_rslora", "rank_pattern", "alpha_pattern")


def target_pattern(targets: list[str], layers: str = "all") -> str:
    """peft's full-match regex for the projections ``targets`` (e.g. ``to_q``, ``to_out.0``)
    of the self- and cross-attention layers (``all``) or the cross-attention ones only."""
    blocks = "attn1|attn2" if layers == "all" else "attn2"
    names = "|".join(re.escape(t) for t in targets)
    return rf".*\.({blocks})\.({names})"


def add_lora(model: nn.Module, rank: int, targets: list[str], layers: str = "all") -> int:
    """Wrap the matching Linear layers of ``model`` with rank-``rank`` LoRA (B = 0, so the
    model is unchanged until trained). Returns the number of wrapped layers."""
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=target_pattern(targets, layers),
                        lora_dropout=0.0, bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return len(lora_layers(model))


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Path -> peft LoRA layer of every wrapped projection of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_modules(model: nn.Module) -> nn.ModuleDict:
    """The trainable LoRA factors by layer path ("." -> "_", as ModuleDict keys forbid
    dots): ``<path>.lora_A.default.weight``, ``<path>.lora_B.default.weight``. Built on
    demand: the modules stay owned by ``model``."""
    return nn.ModuleDict({
        name.replace(".", "_"): nn.ModuleDict({"lora_A": layer.lora_A, "lora_B": layer.lora_B})
        for name, layer in lora_layers(model).items()})


def peft_layout(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """``model``'s LoRA as diffusers and peft exchange it: ``<path>.lora_A.weight`` /
    ``lora_B.weight`` (peft's ``get_peft_model_state_dict``, adapter name dropped) and the
    adapter's config (rank, alpha, targets) for the file's metadata."""
    config = model.peft_config[ADAPTER].to_dict()
    metadata = {key: config[key] for key in LAYOUT_FIELDS}
    if isinstance(metadata["target_modules"], set):
        metadata["target_modules"] = sorted(metadata["target_modules"])
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}, metadata


@contextmanager
def lora_scale(model: nn.Module, scale: float) -> Iterator[None]:
    """ΔW at ``scale`` inside the block, at 1 again after (training continues unchanged)."""
    layers = lora_layers(model).values()
    for layer in layers:
        layer.set_scale(ADAPTER, scale)
    try:
        yield
    finally:
        for layer in layers:
            layer.set_scale(ADAPTER, 1.0)
