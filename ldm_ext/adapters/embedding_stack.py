"""InstantFamily's multimodal embedding stack (Sec. 3.3, Eq. 4-5).

Per face, one global face-recognition embedding and an L x L local feature map are each
projected to the text width and concatenated into L²+1 face tokens; the stack is the 77
text tokens followed by the face tokens of every slot. It conditions every
cross-attention layer of the UNet and the ControlNet.
"""
from __future__ import annotations

import torch
from torch import nn


class FaceProjector(nn.Module):
    """Global (d_gf) + local (d_lf, L, L) face features -> (L²+1, d_K) tokens.

    Linear + LayerNorm per stream (docs/methods.md §1 decision); the global token comes first.
    """

    def __init__(self, global_dim: int, local_dim: int, token_dim: int) -> None:
        super().__init__()
        self.global_proj = nn.Sequential(nn.Linear(global_dim, token_dim), nn.LayerNorm(token_dim))
        self.local_proj = nn.Sequential(nn.Linear(local_dim, token_dim), nn.LayerNorm(token_dim))

    def forward(self, global_feat: torch.Tensor, local_feat: torch.Tensor) -> torch.Tensor:
        """global_feat (B, d_gf), local_feat (B, d_lf, L, L) -> (B, L²+1, d_K)."""
        local_tokens = local_feat.flatten(2).transpose(1, 2)  # (B, L², d_lf)
        return torch.cat(
            [self.global_proj(global_feat).unsqueeze(1), self.local_proj(local_tokens)], dim=1
        )


def stack_embeddings(text: torch.Tensor, faces: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 4-5: K = concat(K_t, K_f1, ..., K_fN) along tokens.

    text (B, T, D), faces (B, N, F, D) with F = L²+1, valid (B, N) bool.
    Returns (B, T + N*F, D). Empty slots are zeroed; the attention masks exclude them too.
    """
    faces = faces * valid[:, :, None, None].to(faces.dtype)
    return torch.cat([text, faces.flatten(1, 2)], dim=1)
