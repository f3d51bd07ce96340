"""Cross-attention keys and values made once per context where nothing trains through them.

A sampling run calls every cross-attention layer once per denoising step with the same
encoder states (text, the face stack, image tokens) and the same frozen weights, so each
layer's keys and values are the same at every step: diffusers projects them again each
time. Here a layer projects them at its first call and, while autograd is off, reuses them
from the `AttentionContext` (alive for one batch or one sampling run), for as long as what
they were made from is unchanged: the same tensors, not edited in place (their version
counter; inference tensors keep none, so an in-place edit under inference_mode goes
unseen), and the same autocast state. Never under ``torch.compile`` (the graph computes
them, and identity checks would break it) nor on the shared empty context.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from ldm_ext.attention.context import NO_EXTRAS, AttentionContext

T = TypeVar("T")


def state_tag(tensor: Tensor) -> tuple[int, int | None, torch.dtype]:
    """A tensor's identity, in-place version (None for an inference tensor) and dtype."""
    return id(tensor), None if tensor.is_inference() else tensor._version, tensor.dtype


def _tag(sources: tuple, device: torch.device) -> tuple:
    """What ``sources`` (tensors, None or other objects, by identity) are now, plus the
    autocast state of ``device``, which sets the dtype of what is built from them."""
    kind = device.type
    autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    return (autocast, *(state_tag(s) if isinstance(s, Tensor) else id(s) for s in sources))


def reused(ctx: AttentionContext, owner: object, sources: tuple, device: torch.device,
           build: Callable[[], T]) -> T:
    """``build()``, made once per ``ctx`` for ``owner`` (a layer or processor) and reused
    while ``sources`` (everything ``build`` reads: inputs, weights, masks) are unchanged;
    built afresh with autograd on, under ``torch.compile`` or without a context."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or ctx is NO_EXTRAS:
        return build()
    tag = _tag(sources, device)
    held = ctx._reused.get(id(owner))
    if held is None or held[0] != tag:
        held = (tag, (owner, sources), build())  # holding them keeps their ids unique
        ctx._reused[id(owner)] = held
    return held[2]
