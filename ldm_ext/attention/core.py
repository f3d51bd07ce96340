"""The attention steps both processors share: diffusers' prelude and epilogue, heads, SDPA.

The prelude/epilogue (spatial/group norm, 4-D reshape, norm_cross, attention_mask,
output projection, residual, rescale) follow diffusers' `AttnProcessor2_0`; the core is
the fused `scaled_dot_product_attention` unless a softmax map must be kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_ext.attention.context import AttentionContext


@dataclass
class Prepared:
    """What the prelude hands to the attention core and the epilogue."""

    residual: Tensor
    hidden: Tensor  # (B, Q, C) queries' input after spatial/group norm
    context: Tensor  # (B, T, D) keys' input (hidden itself for self-attention)
    mask: Tensor | None  # (B, heads, Q or 1, T) additive attention_mask from diffusers
    shape4d: tuple[int, int, int, int] | None  # (B, C, H, W) when the input was 4-D
    is_cross: bool


def prelude(attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None,
             attention_mask: Tensor | None, temb: Tensor | None) -> Prepared:
    """Norms, 4-D -> (B, H*W, C) and diffusers' attention_mask, as in AttnProcessor2_0."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape4d = tuple(hidden_states.shape) if hidden_states.ndim == 4 else None
    if shape4d is not None:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)  # (B, H*W, C)
    is_cross = encoder_hidden_states is not None
    batch, keys = (encoder_hidden_states if is_cross else hidden_states).shape[:2]
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = norm_context(attn, encoder_hidden_states) if is_cross else hidden_states
    return Prepared(residual, hidden_states, context, attention_mask, shape4d, is_cross)


def norm_context(attn, context: Tensor) -> Tensor:
    """The layer's norm_cross on encoder states (text or split values), when it has one."""
    return attn.norm_encoder_hidden_states(context) if attn.norm_cross else context


def epilogue(attn, out: Tensor, prep: Prepared) -> Tensor:
    """out (B, heads, Q, d) -> output projection, 4-D shape, residual, rescale."""
    out = out.transpose(1, 2).flatten(2)  # (B, Q, heads*d)
    out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
    if prep.shape4d is not None:
        out = out.transpose(1, 2).reshape(prep.shape4d)
    if attn.residual_connection:
        out = out + prep.residual
    if attn.rescale_output_factor != 1.0:  # x / 1.0 == x: skip a full pass over (B, Q, C)
        out = out / attn.rescale_output_factor
    return out


def heads(attn, x: Tensor) -> Tensor:
    """(B, L, heads*d) -> (B, heads, L, d)."""
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def attend(query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, scale: float,
            keep_probs: bool) -> tuple[Tensor, Tensor | None]:
    """softmax(QKᵀ·scale + bias) V over (B, heads, ·, d) inputs; the softmax (B, heads, Q, K)
    is materialised only when keep_probs, otherwise the fused SDPA kernel runs."""
    if not keep_probs:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)
        return out, None
    probs = softmax(query, key, bias, scale)
    return probs @ value, probs


def softmax(query: Tensor, key: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """softmax(QKᵀ·scale + bias) (B, heads, Q, K), in fp32 then the query's dtype; a
    boolean ``bias`` is a mask (True = attend, False = −∞), as SDPA reads one."""
    logits = query @ key.transpose(-1, -2) * scale  # (B, heads, Q, K)
    if bias is not None and bias.dtype == torch.bool:  # a boolean mask, as SDPA takes one
        logits = logits.masked_fill(~bias, float("-inf"))
    elif bias is not None:
        logits = logits + bias
    return logits.float().softmax(dim=-1).to(query.dtype)


def record(ctx: AttentionContext, name: str, probs: Tensor, prep: Prepared) -> None:
    """Hand a softmax map (B, heads, Q, K) to ctx.store with its query grid (h, w)."""
    hw = prep.shape4d[2:] if prep.shape4d is not None else ctx.grid(probs.shape[2])
    ctx.store.record(name, probs, hw)
