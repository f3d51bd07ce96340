"""PortraitBooth's Subject Text Embedding Augmentation (STEA, Eq. 4).

    c_i = ψ(w_i)                      for tokens that are not identity tokens,
    c_i = MLP([ψ(w_i) ‖ φ(f)])        for identity tokens ("man", "woman", ...),

ψ the text encoder's output, φ(f) shallow face-recognition features of the subject's
reference face. docs/methods.md §4 Decision: Linear -> GELU -> Linear with a residual from
ψ(w_i) and LayerNorm; here each input stream gets its own LayerNorm (CLIP's outputs have
a few very large channels that would otherwise swamp the face features) and the last
Linear starts at zero, so an untrained STEA returns ψ(w_i): training starts from the
pretrained text conditioning.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

Occurrences = Sequence[Sequence[Sequence[int]]]  # per prompt, per subject, token indices


class STEA(nn.Module):
    """The Eq. 4 MLP: (E, D) token embeddings ψ and (E, F) face features φ -> (E, D).

    Args:
        text_dim: width D of the text encoder's tokens.
        face_dim: width F of the shallow face features.
        hidden_dim: width of the hidden layer (default D).
    """

    def __init__(self, text_dim: int, face_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim or text_dim
        self.text_norm, self.face_norm = nn.LayerNorm(text_dim), nn.LayerNorm(face_dim)
        self.fc1 = nn.Linear(text_dim + face_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, text_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, text: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """text (E, D), faces (E, F) -> c (E, D) = ψ + fc2(GELU(fc1([LN ψ ‖ LN φ])))."""
        joint = torch.cat([self.text_norm(text), self.face_norm(faces)], dim=-1)  # (E, D+F)
        return text + self.fc2(self.act(self.fc1(joint)))


def augment_tokens(text: torch.Tensor, stea: STEA, faces: torch.Tensor,
                   occurrences: Occurrences, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 4 on a batch: text (B, T, D) with the tokens of occurrence k of an identity word
    in prompt b replaced by STEA(ψ, φ(f_bk)) when subject slot k is valid.

    faces (B, N, F) shallow features; valid (B, N) bool; ``occurrences`` from
    ``ldm_ext.word_tokens.word_positions`` (occurrences beyond N stay text). Every piece of
    a word split into several BPE tokens is augmented. Returns a new (B, T, D) tensor."""
    rows, cols, slots = [], [], []
    flags = valid.tolist()
    for b, found in enumerate(occurrences):
        for k, positions in enumerate(found[: faces.shape[1]]):
            if flags[b][k]:
                rows += [b] * len(positions)
                cols += list(positions)
                slots += [k] * len(positions)
    if not rows:
        return text
    index = (torch.tensor(rows, device=text.device), torch.tensor(cols, device=text.device))
    slot = torch.tensor(slots, device=text.device)
    out = stea(text[index].float(), faces[index[0], slot].float())  # (E, D)
    return text.index_put(index, out.to(text.dtype))
