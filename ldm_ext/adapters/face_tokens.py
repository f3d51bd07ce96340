"""Face tokens in IP-Adapter FaceID-PlusV2's form: StoryMaker's R1 (Eq. 4, docs/methods.md §3).

The ArcFace embedding (512, L2-normalised, insightface ``buffalo_l``) is lifted by an MLP to
``num_tokens`` (4) tokens of the UNet's cross-attention width and layer-normalised; a
perceiver then lets those tokens attend to the CLIP ViT-H/14 hidden states of the aligned
face crop, and its output is added back to them (the "shortcut", scaled by ``s_scale``):

    x = LN(MLP(F_face)).view(4, D);  E1 = x + s · Perceiver(CLIP(face crop), x)

StoryMaker always uses the shortcut with s = 1; FaceID-PlusV2's ``shortcut=False`` returns
the perceiver's output alone.
"""
from __future__ import annotations

from torch import Tensor, nn

from ldm_ext.adapters.resampler import Perceiver


class FaceIDPlusTokens(nn.Module):
    """ArcFace embedding + CLIP face tokens -> ``num_tokens`` face tokens (Eq. 4).

    Args:
        token_dim: output width D (SDXL 2048, SD1.5 768).
        id_dim: ArcFace embedding width (512).
        clip_dim: CLIP image encoder hidden width (ViT-H/14: 1280).
        num_tokens: face tokens (4).
        depth: perceiver blocks (4).
        heads: perceiver heads of width 64; default D // 64 as released.
        shortcut: add the MLP tokens back to the perceiver's output (PlusV2, StoryMaker).
        shortcut_scale: s of the shortcut (1.0).
    """

    def __init__(self, token_dim: int, id_dim: int = 512, clip_dim: int = 1280,
                 num_tokens: int = 4, depth: int = 4, heads: int | None = None,
                 shortcut: bool = True, shortcut_scale: float = 1.0) -> None:
        super().__init__()
        self.token_dim, self.num_tokens = token_dim, num_tokens
        self.shortcut, self.shortcut_scale = shortcut, shortcut_scale
        self.id_mlp = nn.Sequential(nn.Linear(id_dim, 2 * id_dim), nn.GELU(),
                                    nn.Linear(2 * id_dim, num_tokens * token_dim))
        self.id_norm = nn.LayerNorm(token_dim)
        self.perceiver = Perceiver(dim=token_dim, depth=depth, dim_head=64,
                                   heads=heads or max(1, token_dim // 64),
                                   embedding_dim=clip_dim, output_dim=token_dim)

    def forward(self, id_embeds: Tensor, face_features: Tensor) -> Tensor:
        """id_embeds (K, id_dim), face_features (K, T, clip_dim) -> (K, num_tokens, D)."""
        x = self.id_mlp(id_embeds).unflatten(-1, (self.num_tokens, self.token_dim))
        x = self.id_norm(x)  # (K, num_tokens, D)
        out = self.perceiver(face_features, x)
        return x + self.shortcut_scale * out if self.shortcut else out
