"""Multiply mode's virtual keys (InstantFamily Eq. 6 with SDPA, see `FaceMasks.bias`).

Eq. 6 multiplies face n's logits by its mask; with an additive bias that is one extra key
per face slot (zero key, the mean of the slot's values) which the masked-out queries use.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_ext.attention.context import AttentionContext
from ldm_ext.attention.masks import TokenLayout
from ldm_ext.attention.reuse import state_tag


@functools.lru_cache(maxsize=16)
def _virtual_mixer(layout: TokenLayout, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(K+N, K): identity on the real keys, then one row per face slot averaging its tokens."""
    mixer = torch.eye(layout.total + layout.num_slots, layout.total, dtype=dtype, device=device)
    for slot in range(layout.num_slots):
        mixer[layout.total + slot, layout.face_slice(slot)] = 1.0 / layout.tokens_per_face
    return mixer


def add_virtual_keys(key: Tensor, value: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor]:
    """Append one virtual token per face slot along dim -2: zeros to the keys (the zero key,
    logit 0), the mean of the slot's tokens to the values (see `FaceMasks.bias`). One op
    each, as small ops dominate this layer's overhead. Works on (B, heads, K, d) projected
    keys/values and on (B, K, D) inputs of to_k/to_v alike; both keep their dtype (under
    autocast the product would not, and a cached pair must fit with and without it)."""
    key = F.pad(key, (0, 0, 0, layout.num_slots))  # (..., K+N, ·)
    # compiled: the graph builds the constant itself (dynamo traces past the cache anyway)
    build = _virtual_mixer.__wrapped__ if torch.compiler.is_compiling() else _virtual_mixer
    mixer = build(layout, value.dtype, value.device)  # (K+N, K)
    return key, (mixer @ value).to(value.dtype)  # (..., K+N, ·)


def virtual_inputs(ctx: AttentionContext, layout: TokenLayout, keys_from: Tensor,
                    values_from: Tensor) -> tuple[Tensor, Tensor]:
    """(B, K+N, D) inputs of to_k / to_v with the virtual tokens appended: a bias-free to_k
    maps the zeros to the zero key, and to_v, being affine, maps the mean of a slot's tokens
    to the mean of its values. All cross-attention layers of a forward see the same encoder
    states, so the pair is built by the first layer and reused by the others, saving two ops
    per layer; not when autograd needs a graph through it (a pair cached in a checkpointed
    no_grad forward has none), nor under ``torch.compile``, whose graph shares the common
    subexpression by itself (the cache's identity checks would break the graph)."""
    if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and (keys_from.requires_grad or values_from.requires_grad)):
        return add_virtual_keys(keys_from, values_from, layout)
    tag = (state_tag(keys_from), state_tag(values_from))
    if ctx._virtual is None or ctx._virtual[0] != tag:
        pair = add_virtual_keys(keys_from, values_from, layout)
        ctx._virtual = (tag, (keys_from, values_from), pair)  # holding them keeps ids unique
    return ctx._virtual[2]


def fold_virtual_probs(probs: Tensor, layout: TokenLayout) -> Tensor:
    """(B, heads, Q, K+N) -> (B, heads, Q, K): a virtual key's probability is shared equally
    by its F face tokens (each has logit 0 there), giving Eq. 6's softmax over real keys."""
    real, virtual = probs[..., :layout.total], probs[..., layout.total:]
    share = (virtual / layout.tokens_per_face).repeat_interleave(layout.tokens_per_face, dim=-1)
    return torch.cat([real[..., :layout.num_text], real[..., layout.num_text:] + share], dim=-1)
