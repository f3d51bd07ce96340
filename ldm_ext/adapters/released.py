"""Released checkpoints loaded by their own key names, strictly, without unpickling objects.

Three releases initialise or run StoryMaker (docs/methods.md §3):

=====================  ==================  =============================================
release                 sections            loaded into
=====================  ==================  =============================================
IP-Adapter              ``image_proj``      ``FaceIDPlusTokens`` (R1)
FaceID-PlusV2           ``ip_adapter``      UNet LoRA (peft) + decoupled K_i / V_i
(SD1.5, SDXL)
IP-Adapter-Plus         ``image_proj``      ``Resampler`` (R2)
ViT-H (SD1.5, SDXL)     ``ip_adapter``      decoupled K_i / V_i (optional)
StoryMaker              ``image_proj_model`` ``PositionalPerceiverResampler``
(``mask.bin``, SDXL)    ``ip_adapter``      UNet LoRA (peft) + decoupled K_i / V_i
=====================  ==================  =============================================

Key mapping (ours -> released), applied to every key of a section:

- perceiver blocks: ``layers.i.attn.norm_media`` -> ``layers.i.0.norm1``,
  ``layers.i.attn.norm_latents`` -> ``layers.i.0.norm2``, ``layers.i.attn.<to_q|to_kv|
  to_out>`` -> ``layers.i.0.<same>``, ``layers.i.ff.<norm|up|down>`` -> ``layers.i.1.<0|1|3>``;
  ``latents``, ``proj_in``, ``proj_out``, ``norm_out`` keep their names;
- face tokens: ``id_mlp.<0|2>`` -> ``proj.<0|2>``, ``id_norm`` -> ``norm``, ``perceiver.*`` ->
  ``perceiver_resampler.*``;
- PPR: ``face.*`` -> (face tokens, no prefix), ``character.*`` -> ``resample.*``,
  ``position`` -> ``pos_embed``, ``background`` -> ``bg_embed``, ``fuse`` -> ``proj_out``,
  ``fuse_norm`` -> ``norm_out``;
- ``ip_adapter``: IP-Adapter saves ``ModuleList(unet.attn_processors.values())``, so ``i`` is
  a layer's position in ``unet.attn_processors``: ``i.to_<q|k|v>_lora.<down|up>.weight`` ->
  ``<layer>.to_<q|k|v>.lora_<A|B>.default.weight`` (peft; rank = released rank, alpha = rank:
  the released LoRA has no alpha), ``i.to_out_lora.*`` -> ``<layer>.to_out.0.lora_*``,
  ``i.to_k_ip.weight`` / ``i.to_v_ip.weight`` -> ``<layer>.processor.to_k_ip`` / ``to_v_ip``.

A key the file lacks or one it has beyond those, in a loaded section, stops the load naming
it; sections the caller does not load are returned as skipped, never silently dropped.
``.safetensors`` files hold ``<section>.<key>``; ``.bin`` files are read with
``torch.load(weights_only=True)`` (``ldm_ext.weights.load_checkpoint``). ``save_released``
writes the same targets back in the released layout (the inverse: what ``ldm_ext.export``
writes for a trained StoryMaker is what the official pipeline and ``load_released`` read).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ldm_ext.cli import UserError
from ldm_ext.weights import load_checkpoint

Rename = Callable[[str], str]
Targets = dict[str, dict[str, torch.Tensor]]  # section -> released name -> our parameter
LORA_NAMES = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora",
              "to_out.0": "to_out_lora"}


class ReleasedWeightsError(UserError, ValueError):
    """A released checkpoint that is missing, unreadable or does not match; names it."""


def _rules(pairs: list[tuple[str, str]]) -> Rename:
    """The first matching (pattern, replacement) rewrites the key; none: unchanged."""
    compiled = [(re.compile(p), r) for p, r in pairs]

    def rename(key: str) -> str:
        for pattern, replacement in compiled:
            if pattern.match(key):
                return pattern.sub(replacement, key, count=1)
        return key
    return rename


def _prefixes(table: list[tuple[str, str, Rename | None]]) -> Rename:
    """(our prefix, released prefix, rename of the rest) by first matching prefix."""
    def rename(key: str) -> str:
        for ours, theirs, inner in table:
            if key.startswith(ours):
                rest = key[len(ours):]
                return theirs + (inner(rest) if inner else rest)
        raise KeyError(f"no released name for parameter '{key}'")
    return rename


PERCEIVER = _rules([
    (r"^layers\.(\d+)\.attn\.norm_media\.", r"layers.\1.0.norm1."),
    (r"^layers\.(\d+)\.attn\.norm_latents\.", r"layers.\1.0.norm2."),
    (r"^layers\.(\d+)\.attn\.", r"layers.\1.0."),
    (r"^layers\.(\d+)\.ff\.norm\.", r"layers.\1.1.0."),
    (r"^layers\.(\d+)\.ff\.up\.", r"layers.\1.1.1."),
    (r"^layers\.(\d+)\.ff\.down\.", r"layers.\1.1.3."),
])
FACE_TOKENS = _prefixes([("id_mlp.", "proj.", None), ("id_norm.", "norm.", None),
                         ("perceiver.", "perceiver_resampler.", PERCEIVER)])
PPR = _prefixes([("face.", "", FACE_TOKENS), ("character.", "resample.", PERCEIVER),
                 ("position", "pos_embed", None), ("background", "bg_embed", None),
                 ("fuse.", "proj_out.", None), ("fuse_norm.", "norm_out.", None)])


def module_targets(module: nn.Module, rename: Rename) -> dict[str, torch.Tensor]:
    """Released name -> parameter of ``module`` (``rename`` maps our names)."""
    return {rename(name): param for name, param in module.named_parameters()}


def adapter_targets(unet: nn.Module, lora: bool = True,
                    adapter: str = "default") -> dict[str, torch.Tensor]:
    """Released ``ip_adapter`` name -> parameter: LoRA (peft layers of ``adapter``, when
    ``lora``) and the decoupled processors' K_i / V_i, indexed by each layer's position in
    ``unet.attn_processors``."""
    from peft.tuners.lora import LoraLayer

    from ldm_ext.attention import DecoupledAttnProcessor

    targets: dict[str, torch.Tensor] = {}
    for index, key in enumerate(unet.attn_processors):
        layer = unet.get_submodule(key.removesuffix(".processor"))
        for ours, theirs in LORA_NAMES.items() if lora else ():
            wrapped = layer.get_submodule(ours)
            if isinstance(wrapped, LoraLayer) and adapter in wrapped.lora_A:
                targets[f"{index}.{theirs}.down.weight"] = wrapped.lora_A[adapter].weight
                targets[f"{index}.{theirs}.up.weight"] = wrapped.lora_B[adapter].weight
        if isinstance(layer.processor, DecoupledAttnProcessor):
            targets[f"{index}.to_k_ip.weight"] = layer.processor.to_k_ip.weight
            targets[f"{index}.to_v_ip.weight"] = layer.processor.to_v_ip.weight
    return targets


def read_released(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Section -> {key: tensor} of a released ``.bin`` / ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise ReleasedWeightsError(f"released weights '{path}' not found: download the "
                                   "checkpoint (see README, StoryMaker) and name its path")
    if path.suffix == ".safetensors":
        sections: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(str(path)).items():
            section, _, rest = key.partition(".")
            sections.setdefault(section, {})[rest] = tensor
        return sections
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise ReleasedWeightsError(f"{path}: not a released adapter checkpoint "
                                   "(expected sections of tensors, e.g. image_proj, ip_adapter)")
    return state


def load_released(path: str | Path, targets: Targets) -> list[str]:
    """Copy the sections of ``targets`` from the released file at ``path`` into our
    parameters, strictly (every key of a loaded section, no more, same shapes). Returns
    the file's sections that were not loaded."""
    state = read_released(path)
    for section, params in targets.items():
        if section not in state:
            raise ReleasedWeightsError(f"{path}: no '{section}' section "
                                       f"(found: {', '.join(sorted(state))})")
        _copy_section(path, section, state[section], params)
    return sorted(set(state) - set(targets))


def save_released(path: str | Path, targets: Targets) -> Path:
    """Write our parameters under their released names (``targets``, as for
    ``load_released``): ``.safetensors`` as ``<section>.<key>``, any other suffix as the
    released ``torch.save`` form ``{section: {key: tensor}}`` (what ``mask.bin`` holds)."""
    path = Path(path)
    state = {section: {name: param.detach().float().cpu().contiguous()
                       for name, param in params.items()}
             for section, params in targets.items()}
    if path.suffix == ".safetensors":
        save_file({f"{section}.{name}": tensor for section, tensors in state.items()
                   for name, tensor in tensors.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _copy_section(path, section: str, found: dict[str, torch.Tensor],
                  params: dict[str, torch.Tensor]) -> None:
    missing, unexpected = sorted(params.keys() - found.keys()), sorted(found.keys() - params.keys())
    if missing or unexpected:
        raise ReleasedWeightsError(
            f"{path} [{section}]: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            f", unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
            "(another model size, or a recipe with other LoRA targets?)")
    for name, param in params.items():
        if tuple(found[name].shape) != tuple(param.shape):
            raise ReleasedWeightsError(f"{path} [{section}]: '{name}' has shape "
                                       f"{tuple(found[name].shape)}, ours {tuple(param.shape)}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(found[name])


def faceid_plusv2_targets(face: nn.Module, unet: nn.Module | None = None) -> Targets:
    """IP-Adapter FaceID-PlusV2: ``image_proj`` -> the face tokens (R1); with ``unet``
    also ``ip_adapter`` -> its LoRA and decoupled K_i / V_i."""
    targets = {"image_proj": module_targets(face, FACE_TOKENS)}
    if unet is not None:
        targets["ip_adapter"] = adapter_targets(unet)
    return targets


def ip_adapter_plus_targets(resampler: nn.Module, unet: nn.Module | None = None) -> Targets:
    """IP-Adapter-Plus: ``image_proj`` -> the character resampler (R2); with ``unet`` also
    ``ip_adapter`` -> the decoupled K_i / V_i (no LoRA in this release)."""
    targets = {"image_proj": module_targets(resampler, PERCEIVER)}
    if unet is not None:
        targets["ip_adapter"] = adapter_targets(unet, lora=False)
    return targets


def storymaker_targets(ppr: nn.Module, unet: nn.Module) -> Targets:
    """StoryMaker's ``mask.bin``: ``image_proj_model`` -> the whole PPR, ``ip_adapter`` ->
    the UNet's LoRA and decoupled K_i / V_i."""
    return {"image_proj_model": module_targets(ppr, PPR), "ip_adapter": adapter_targets(unet)}
