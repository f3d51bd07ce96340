"""StoryMaker's Positional-aware Perceiver Resampler, PPR (Eq. 4-7, docs/methods.md §3).

Per character i (at most ``max_characters``, 3 released):

    E1 = R1(F_face)                        (Eq. 4: FaceID-PlusV2 face tokens, 4)
    E2 = R2(F_character)                   (Eq. 5: IP-Adapter-Plus resampler, 16)
    C  = Cat(E1, E2) + E_pos[i]            (L = 20 tokens of width D)
    E_i = LN(W C + b) + C                  (Eq. 6: the paper's "MLP" is, in the released
                                            code, a zero-initialised Linear + LayerNorm with
                                            a residual, so training starts from Cat + E_pos)
    c_i = Cat(E_bg, E_1, ..., E_N)         (Eq. 7: learned background first, (N+1)·L x D)

Setting E2 = 0 keeps the identity only (the paper's stylisation mode, Fig. 4).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ldm_ext.adapters.face_tokens import FaceIDPlusTokens
from ldm_ext.adapters.resampler import Resampler


class PositionalPerceiverResampler(nn.Module):
    """Eq. 4-7 over the characters of a batch; absent characters get zero tokens (their
    keys are masked in the image attention, ``AttentionContext.image_mask``).

    Args:
        face: R1, the face-token module.
        character: R2, the character resampler.
        max_characters: rows of the position embedding E_pos (3 released).
    """

    def __init__(self, face: FaceIDPlusTokens, character: Resampler,
                 max_characters: int = 3) -> None:
        super().__init__()
        self.face, self.character = face, character
        dim = face.token_dim
        self.tokens_per_character = face.num_tokens + character.latents.shape[1]
        self.position = nn.Parameter(torch.zeros(max_characters, self.tokens_per_character, dim))
        self.background = nn.Parameter(torch.zeros(1, self.tokens_per_character, dim))
        self.fuse = nn.Linear(dim, dim)
        self.fuse_norm = nn.LayerNorm(dim)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    @property
    def max_characters(self) -> int:
        return self.position.shape[0]

    def character_tokens(self, id_embeds: Tensor, face_features: Tensor,
                         character_features: Tensor, positions: Tensor,
                         zero_face: Tensor | None = None,
                         zero_character: Tensor | None = None) -> Tensor:
        """Eq. 4-6 for K characters: (K, L, D). ``positions`` (K,) index E_pos;
        ``zero_face`` / ``zero_character`` (K,) bool zero E1 / E2 of those characters."""
        e1 = self.face(id_embeds, face_features)  # (K, 4, D)
        e2 = self.character(character_features)  # (K, 16, D)
        if zero_face is not None:
            e1 = e1 * (~zero_face).to(e1.dtype)[:, None, None]
        if zero_character is not None:
            e2 = e2 * (~zero_character).to(e2.dtype)[:, None, None]
        cat = torch.cat([e1, e2], dim=1) + self.position[positions]  # (K, L, D)
        return self.fuse_norm(self.fuse(cat)) + cat

    def forward(self, id_embeds: Tensor, face_features: Tensor, character_features: Tensor,
                valid: Tensor, zero_face: Tensor | None = None,
                zero_character: Tensor | None = None) -> Tensor:
        """Image tokens c_i (Eq. 7) of a batch: (B, (N+1)·L, D).

        valid (B, N) bool marks the present characters; the K = valid.sum() inputs are
        theirs in row-major order: id_embeds (K, 512), face_features (K, T, C),
        character_features (K, T', C'), zero_face / zero_character (K,) bool.
        Character n of a sample takes E_pos[n]."""
        batch, slots = valid.shape
        if slots > self.max_characters:
            raise ValueError(f"{slots} character slots, the position embedding has "
                             f"{self.max_characters}")
        where = valid.nonzero()  # (K, 2): (sample, slot)
        tokens = self.character_tokens(id_embeds, face_features, character_features,
                                       where[:, 1], zero_face, zero_character)
        out = tokens.new_zeros(batch, slots, *tokens.shape[1:])  # (B, N, L, D)
        out[valid] = tokens
        background = self.background.to(tokens.dtype).expand(batch, -1, -1)  # (B, L, D)
        return torch.cat([background, out.flatten(1, 2)], dim=1)
