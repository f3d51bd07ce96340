"""Perceiver resamplers in IP-Adapter's form (StoryMaker Eq. 4-5, docs/methods.md §3).

A perceiver turns a variable set of image features ("media", e.g. CLIP ViT-H/14 hidden
states, 257 x 1280) into a fixed number of latent tokens: every block lets the latents
attend to the media *and to themselves* (keys/values from both), then a feed-forward
layer, each with a residual. Two users:

- :class:`Resampler` (IP-Adapter-Plus): the latents are learned queries, 16 of them; this
  is StoryMaker's character resampler R2 (Eq. 5).
- :class:`Perceiver` with given latents: IP-Adapter FaceID-PlusV2 refines its 4 ArcFace
  tokens by attending to the CLIP tokens of the face crop (``face_tokens.py``, R1 of Eq. 4).

Module names are ours; ``released.py`` maps them to the released checkpoints' keys
(``layers.<i>.0.norm1`` = ``layers.<i>.attn.norm_media`` and so on).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PerceiverAttention(nn.Module):
    """Latents attend to the media and to themselves: softmax(q kᵀ/√d) v with q from the
    (normalised) latents and k, v from [media; latents].

    Args:
        dim: width of media and latents (the media are projected to it first).
        dim_head: width of one head (64 in every released model).
        heads: number of heads.
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        """media (B, T, dim), latents (B, Q, dim) -> (B, Q, dim) (no residual here)."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        query = self._heads(self.to_q(latents))  # (B, heads, Q, d)
        key, value = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(query, self._heads(key), self._heads(value))
        return self.to_out(out.transpose(1, 2).flatten(2))  # (B, Q, heads*d) -> (B, Q, dim)

    def _heads(self, x: Tensor) -> Tensor:
        """(B, L, heads*d) -> (B, heads, L, d)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class FeedForward(nn.Module):
    """LayerNorm, Linear up (x mult, no bias), GELU, Linear down (no bias)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, dim * mult, bias=False)
        self.down = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(self.norm(x))))


class PerceiverBlock(nn.Module):
    """latents += attn(media, latents); latents += ff(latents)."""

    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim, dim_head, heads)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        latents = self.attn(media, latents) + latents
        return self.ff(latents) + latents


class Perceiver(nn.Module):
    """proj_in on the media, ``depth`` perceiver blocks on the given latents, proj_out and
    a LayerNorm: IP-Adapter FaceID-PlusV2's face perceiver.

    Args:
        dim: inner width (of the latents given to ``forward``).
        depth: number of blocks (4 released).
        dim_head, heads: attention heads (64 x dim // 64 released).
        embedding_dim: width of the media (CLIP ViT-H/14 hidden size, 1280).
        output_dim: width of the output tokens (the UNet's cross-attention width).
        ff_mult: feed-forward expansion (4).
    """

    def __init__(self, dim: int, depth: int = 4, dim_head: int = 64, heads: int = 16,
                 embedding_dim: int = 1280, output_dim: int = 768, ff_mult: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.layers = nn.ModuleList(PerceiverBlock(dim, dim_head, heads, ff_mult)
                                    for _ in range(depth))
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        """media (B, T, embedding_dim), latents (B, Q, dim) -> (B, Q, output_dim)."""
        media = self.proj_in(media)  # (B, T, dim)
        for block in self.layers:
            latents = block(media, latents)
        return self.norm_out(self.proj_out(latents))


class Resampler(Perceiver):
    """IP-Adapter-Plus resampler: ``num_queries`` learned latents (init N(0, 1/dim)) through
    a :class:`Perceiver`. StoryMaker's character resampler R2 (Eq. 5): dim 1280, depth 4,
    20 heads x 64, 16 queries over CLIP ViT-H/14 ``hidden_states[-2]`` (257 x 1280)."""

    def __init__(self, dim: int = 1280, depth: int = 4, dim_head: int = 64, heads: int = 20,
                 num_queries: int = 16, embedding_dim: int = 1280, output_dim: int = 2048,
                 ff_mult: int = 4) -> None:
        super().__init__(dim, depth, dim_head, heads, embedding_dim, output_dim, ff_mult)
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)

    def forward(self, media: Tensor) -> Tensor:  # type: ignore[override]
        """media (B, T, embedding_dim) -> (B, num_queries, output_dim)."""
        return super().forward(media, self.latents.expand(media.shape[0], -1, -1))
