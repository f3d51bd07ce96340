"""Files in other ecosystems' layouts that ``ldm_ext.export`` writes beside idforge's own.

A method declares its layouts with ``IdentityMethod.export_layouts()``: the base class adds
the UNet's LoRA in diffusers' layout whenever one trains (``DiffusersLora``), a method adds
its own (StoryMaker: its adapter under the official release's key names, ``ReleasedLayout``).
Export code only calls ``write`` and ``card`` on them, so it names no method.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from torch import nn

from ldm_ext.adapters.lora import lora_layers, peft_layout
from ldm_ext.adapters.released import Targets, save_released


class ExportLayout(Protocol):
    """One file set in another ecosystem's layout."""

    def write(self, out: Path, official_bin: bool = False) -> list[str]:
        """Write the files into ``out``; their names (``official_bin``: also the
        ``torch.save`` form where the official loader reads only that)."""

    def card(self, ref: str, local: str, files: list[str]) -> str:
        """Model-card Markdown loading ``files`` from ``ref`` (a Hub repo id or the folder)
        or ``local`` (the folder on disk, for loaders that take a file path); Python code
        may use ``base``, the base model id or folder the card defines first."""


def trains_lora(model: nn.Module, trainable: dict[str, torch.nn.Parameter]) -> bool:
    """Whether ``model`` holds peft LoRA layers whose factors are among ``trainable``."""
    ids = {id(p) for p in trainable.values()}
    return any(id(p) in ids for layer in lora_layers(model).values()
               for p in layer.lora_A.parameters())


@dataclass
class DiffusersLora:
    """The UNet's LoRA as ``pipe.load_lora_weights(folder)`` reads it: keys
    ``unet.<module path>.lora_A.weight`` / ``lora_B.weight`` and the adapter's rank, alpha
    and targets as ``lora_adapter_metadata``, written by diffusers' own
    ``save_lora_weights``."""

    unet: nn.Module
    FILE: ClassVar[str] = "pytorch_lora_weights.safetensors"

    def write(self, out: Path, official_bin: bool = False) -> list[str]:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        state, metadata = peft_layout(self.unet)
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            str(out), unet_lora_layers=state, unet_lora_adapter_metadata=metadata,
            weight_name=self.FILE)
        return [self.FILE]

    def card(self, ref: str, local: str, files: list[str]) -> str:
        count = len(lora_layers(self.unet))
        return (f"LoRA ({count} UNet layers, `{self.FILE}`), into any diffusers pipeline of "
                "the base model:\n\n```python\nfrom diffusers import DiffusionPipeline\n\n"
                f"pipe = DiffusionPipeline.from_pretrained(base)\n"
                f'pipe.load_lora_weights("{ref}")  # scale 1 = as trained\n```\n')


@dataclass
class ReleasedLayout:
    """Trained parts under a public release's own key names (``adapters/released.py``):
    ``<stem>.safetensors`` (``<section>.<key>``) and on request ``<stem>.bin``, the
    ``{section: {key: tensor}}`` dict the release ships. ``usage`` is the card's Markdown
    with ``{bin}``, ``{safetensors}`` (local paths) and ``{ref}`` filled in."""

    stem: str
    targets: Targets
    usage: str

    def write(self, out: Path, official_bin: bool = False) -> list[str]:
        suffixes = [".safetensors", ".bin"] if official_bin else [".safetensors"]
        return [save_released(out / f"{self.stem}{s}", self.targets).name for s in suffixes]

    def card(self, ref: str, local: str, files: list[str]) -> str:
        bin_file = f"{self.stem}.bin"
        return self.usage.format(ref=ref, safetensors=f"{local}/{self.stem}.safetensors",
                                 bin=f"{local}/{bin_file}" if bin_file in files else
                                 f"{bin_file} (export with --official-bin)")
