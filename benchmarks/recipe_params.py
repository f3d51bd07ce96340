"""Exact parameter counts of each method's training recipe, frozen and trainable apart.

The recipe's own LightningModule is built through its registry entry on the meta device (no
memory, no weights), from the published shapes: ``model.pretrained=published`` gives SD1.5
(UNet, VAE, CLIP ViT-L text encoder) or SDXL base 1.0 (its UNet, VAE and two text
encoders) with a ControlNet of the UNet's encoder shape where the recipe names one
(``ldm_ext/fullsize.py``: the builders its random folders are written with), and the
method config's ``published_shapes`` hook swaps its encoder weights for random ones of the
same shape (StoryMaker's insightface encoder counts as buffalo_l's IResNet-50). Parts are
the method's child modules; what trains is what ``trainable_modules()`` unfreezes
(``requires_grad``), so a trainable part inside a frozen model (StoryMaker's LoRA and
K_i / V_i in the UNet, InstantFamily's UNet K/V) is its own row, ``<part> (trained)``.
Used by ``memory_plan.py``.
"""
from __future__ import annotations

import torch
from torch import nn

Counts = dict[str, tuple[int, bool]]  # part -> (parameters, trainable)


def published_method(cfg) -> nn.Module:
    """The method of recipe ``cfg`` built on the meta device from published shapes."""
    from omegaconf import OmegaConf

    from ldm_ext.backbone import PUBLISHED
    from ldm_ext.registry import method_spec

    spec = method_spec(cfg.method.name)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))  # the caller's config stays as it was
    cfg.model.pretrained = PUBLISHED
    cfg.method.update(spec.config_class.published_shapes(cfg.method))
    with torch.device("meta"):
        return spec.module_class.from_config(cfg)


def part_counts(method: nn.Module) -> Counts:
    """Part (child module, ``_`` read as a space) -> (parameters, trainable); a part with
    both kinds is split into ``<part>`` (frozen) and ``<part> (trained)``."""
    counts: Counts = {}
    seen: set[int] = set()
    for name, child in method.named_children():
        params = [p for p in child.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        label = name.replace("_", " ")
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params) - trainable
        if frozen:
            counts[label] = (frozen, False)
        if trainable:
            counts[f"{label} (trained)" if frozen else label] = (trainable, True)
    return counts


def recipe_counts(cfg) -> Counts:
    """Part -> (parameters, trainable) of recipe ``cfg``, built on the meta device."""
    return part_counts(published_method(cfg))
