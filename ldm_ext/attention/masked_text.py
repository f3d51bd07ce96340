"""`MaskedTextAttnProcessor`: attention over the text keys, masked and split when asked.

- masked cross-attention, InstantFamily Eq. 6-8: softmax(M ⊙ QKᵀ/√d) V (ctx.face_masks),
- split K/V conditioning, SeFi-IDE Sec. III-C: keys from one prompt, values from another
  (ctx.value_states),
- softmax maps recorded for the layers an `AttentionStore` wants, and (detached) those of
  the same queries against other keys (ctx.probe_states: a reference map in the same pass).

With an empty context it is diffusers' `AttnProcessor2_0`. `DecoupledAttnProcessor` runs
the same text branch (`text_attention`) before its image branch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_ext.attention.context import NO_EXTRAS, AttentionContext
from ldm_ext.attention.core import (Prepared, attend, epilogue, heads, norm_context, prelude,
                                    record, softmax)
from ldm_ext.attention.masks import FaceMasks
from ldm_ext.attention.reuse import reused
from ldm_ext.attention.virtual import add_virtual_keys, fold_virtual_probs, virtual_inputs


def _masked_attention(query: Tensor, key: Tensor, value: Tensor, faces: FaceMasks,
                      extra: Tensor | None, scale: float,
                      keep_probs: bool) -> tuple[Tensor, Tensor | None]:
    """InstantFamily Eq. 6 with SDPA and the per-batch bias of `FaceMasks.bias`; key and
    value (B, heads, K', d) already carry multiply mode's virtual tokens (`_keys_values`)."""
    layout, (batch, _, num_q, _) = faces.layout, query.shape
    bias = faces.bias(num_q, query.dtype, query.device)  # (B, 1, Q, K')
    if bias.shape[0] not in (1, batch):
        raise ValueError(f"face masks built for batch {bias.shape[0]}, layer sees {batch} "
                         "(classifier-free guidance doubles the batch: build masks for it)")
    if extra is not None:
        bias = bias + F.pad(extra, (0, bias.shape[-1] - extra.shape[-1]))
    out, probs = attend(query, key, value, bias, scale, keep_probs)
    if probs is not None and faces.mode == "multiply":
        probs = fold_virtual_probs(probs, layout)
    return out, probs


def _keys_values(attn, prep: Prepared, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
    """Key and value (B, heads, T, d) of `_project_keys_values`; in cross-attention made
    once per context while autograd is off (`reuse.reused`: the same at every step of a
    sampling run)."""
    if not prep.is_cross:
        return _project_keys_values(attn, prep, ctx)
    sources = (prep.context, ctx.value_states, ctx.face_masks, attn.to_k.weight,
               attn.to_k.bias, attn.to_v.weight, attn.to_v.bias,
               getattr(attn.norm_k, "weight", None))
    return reused(ctx, attn, sources, prep.context.device,
                  lambda: _project_keys_values(attn, prep, ctx))


def _project_keys_values(attn, prep: Prepared, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
    """Key and value (B, heads, T, d). In cross-attention the values come from
    ctx.value_states when given (split K/V), and multiply face masks append their N virtual
    tokens (T = K + N): to to_k/to_v's inputs, once per batch, when to_k maps zeros to the
    zero key (no bias, no norm_k, as in SD1.5/SDXL), else to the projected keys/values."""
    keys_from = values_from = prep.context
    if prep.is_cross and ctx.value_states is not None:
        if ctx.value_states.shape[:2] != prep.context.shape[:2]:
            raise ValueError("value_states must match encoder_hidden_states in batch and tokens")
        values_from = norm_context(attn, ctx.value_states)
    faces = ctx.face_masks if prep.is_cross else None
    if faces is not None and keys_from.shape[1] != faces.layout.total:
        raise ValueError(f"{keys_from.shape[1]} keys but the token layout has "
                         f"{faces.layout.total}")
    virtual = faces is not None and faces.mode == "multiply"
    on_inputs = virtual and attn.to_k.bias is None and attn.norm_k is None
    if on_inputs:
        keys_from, values_from = virtual_inputs(ctx, faces.layout, keys_from, values_from)
    key = heads(attn, attn.to_k(keys_from))
    value = heads(attn, attn.to_v(values_from))
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if virtual and not on_inputs:
        key, value = add_virtual_keys(key, value, faces.layout)
    return key, value


def text_attention(name: str, attn, prep: Prepared,
                    ctx: AttentionContext) -> tuple[Tensor, Tensor]:
    """Query (B, heads, Q, d) and attention output (B, heads, Q, d) over the text keys,
    masked (ctx.face_masks) and with split values (ctx.value_states) in cross-attention."""
    query = heads(attn, attn.to_q(prep.hidden))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    key, value = _keys_values(attn, prep, ctx)
    keep = ctx.store is not None and ctx.store.wants(name)
    if prep.is_cross and ctx.face_masks is not None:
        out, probs = _masked_attention(query, key, value, ctx.face_masks, prep.mask,
                                       attn.scale, keep)
    else:
        out, probs = attend(query, key, value, prep.mask, attn.scale, keep)
    if keep:
        record(ctx, name, probs, prep)
    if prep.is_cross and ctx.probe_states and ctx.store is not None:
        _record_probes(name, attn, query, prep, ctx)
    return query, out


@torch.no_grad()
def _record_probes(name: str, attn, query: Tensor, prep: Prepared,
                   ctx: AttentionContext) -> None:
    """Record softmax(Q K_pᵀ/√d) of this layer's queries against the keys of each probe
    (ctx.probe_states) as "<name>:<tag>", without gradients; the output is untouched."""
    for tag, states in ctx.probe_states.items():
        probe = f"{name}:{tag}"
        if ctx.store.wants(probe):
            key = heads(attn, attn.to_k(norm_context(attn, states)))  # (B, heads, T, d)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            record(ctx, probe, softmax(query, key, prep.mask, attn.scale), prep)


class MaskedTextAttnProcessor:
    """No weights. Plain attention when ctx carries nothing; masked cross-attention when
    ctx.face_masks; split K/V when ctx.value_states; records maps when ctx.store wants
    this layer. Self-attention layers ignore face_masks/value_states."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 ctx: AttentionContext | None = None) -> Tensor:
        prep = prelude(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        _, out = text_attention(self.name, attn, prep, ctx or NO_EXTRAS)
        return epilogue(attn, out, prep)
