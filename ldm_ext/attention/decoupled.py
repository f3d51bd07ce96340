"""`DecoupledAttnProcessor`: decoupled cross-attention, IP-Adapter / StoryMaker Eq. 3."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ldm_ext.attention.context import NO_EXTRAS, AttentionContext
from ldm_ext.attention.core import Prepared, attend, epilogue, heads, prelude, record
from ldm_ext.attention.masked_text import text_attention
from ldm_ext.attention.reuse import reused


class DecoupledAttnProcessor(nn.Module):
    """IP-Adapter / StoryMaker Eq. 3: Z = Attn(Q,K_t,V_t) + gamma * Attn(Q,K_i,V_i),
    K_i = to_k_ip(image_tokens), V_i = to_v_ip(image_tokens). Owns to_k_ip / to_v_ip.
    Records the image-attention softmax as f"{name}:ip" when the store wants it (StoryMaker
    Eq. 9-12 loss needs P = softmax(Q K_i^T/sqrt d)).

    The text branch is `MaskedTextAttnProcessor`'s (masks, split K/V and maps included). The image
    branch runs when ctx.image_tokens is given and ctx.ip_scale != 0.

    Args:
        name: layer name (keys of the attention store).
        hidden_size: output width of K_i/V_i (the layer's inner dim).
        cross_attention_dim: width of the text tokens.
        image_dim: width of the image tokens; defaults to cross_attention_dim.
    """

    def __init__(self, name: str, hidden_size: int, cross_attention_dim: int,
                 image_dim: int | None = None):
        super().__init__()
        self.name = name
        in_dim = cross_attention_dim if image_dim is None else image_dim
        self.to_k_ip = nn.Linear(in_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(in_dim, hidden_size, bias=False)

    # diffusers reads the processor's __call__ signature to decide which kwargs to pass,
    # so it must name `ctx`; nn.Module.__call__ (hooks) then runs forward.
    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 ctx: AttentionContext | None = None) -> Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask,
                                temb, ctx)

    def forward(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                attention_mask: Tensor | None = None, temb: Tensor | None = None,
                ctx: AttentionContext | None = None) -> Tensor:
        ctx = ctx or NO_EXTRAS
        prep = prelude(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        query, out = text_attention(self.name, attn, prep, ctx)
        if prep.is_cross and ctx.image_tokens is not None and ctx.ip_scale != 0:
            # one fused kernel for out + gamma * image_out (no gamma * image_out temporary)
            out = torch.add(out, self._image_attention(attn, query, prep, ctx), alpha=ctx.ip_scale)
        return epilogue(attn, out, prep)

    def _image_attention(self, attn, query: Tensor, prep: Prepared,
                         ctx: AttentionContext) -> Tensor:
        """Attn(Q, K_i, V_i) as (B, heads, Q, d) over the tokens ctx.image_mask keeps;
        records its softmax as "<name>:ip"."""
        sources = (ctx.image_tokens, self.to_k_ip.weight, self.to_v_ip.weight, query.dtype)
        key, value = reused(ctx, self, sources, query.device,
                            lambda: self._image_keys_values(attn, ctx.image_tokens, query.dtype))
        name = f"{self.name}:ip"
        keep = ctx.store is not None and ctx.store.wants(name)
        out, probs = attend(query, key, value, ctx.image_mask, attn.scale, keep)
        if keep:
            record(ctx, name, probs, prep)
        return out

    def _image_keys_values(self, attn, tokens: Tensor,
                           dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """K_i, V_i (B, heads, M, d) of the image tokens (B, M, D_img), in ``dtype``."""
        tokens = tokens.to(self.to_k_ip.weight.dtype)
        key = heads(attn, self.to_k_ip(tokens).to(dtype))
        value = heads(attn, self.to_v_ip(tokens).to(dtype))
        return key, value
