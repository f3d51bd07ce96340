"""SeFi-IDE's per-stage tokens (Sec. III-C, Fig. 5; docs/methods.md §2).

One identity is a pseudo-word ``V*`` with word embedding P (1 x D), the token embedding of an
initializer word ("person"). A small module (two self-attention layers + one feed-forward
layer) maps P to S (key, value) token pairs, one pair per S-th of the diffusion timesteps:
pair i replaces ``V*`` in the prompt that builds the key condition (P_i^K) and in the one
that builds the value condition (P_i^V).

Decisions (the paper gives no sizes): the module's input is P repeated 2S times plus 2S
learned slot embeddings; it works at ``width`` (in/out projections from and to the token
width D, so SDXL's 2048-wide two-encoder tokens keep a small module) with pre-LayerNorm
residual blocks; its output projection and the slot embeddings start at zero, so before any
step every token equals P and ``V*`` reads as the initializer word.
"""
from __future__ import annotations

import torch
from torch import nn

METADATA_KEY = "stage_tokens"  # identity files: the module's sizes (``hparams``), as JSON


def stage_of(timesteps: torch.Tensor, num_stages: int = 5,
             num_train_timesteps: int = 1000) -> torch.Tensor:
    """Stage index (0-based) of each timestep: the T timesteps split into ``num_stages``
    equal stages in denoising order, so stage 0 (the paper's stage 1) is the first
    S-th of denoising, t in [T - T/S, T) (t in [800, 1000) for 5 stages of 1000).

    timesteps (B,) int -> (B,) long in [0, num_stages)."""
    t = timesteps.long().clamp(0, num_train_timesteps - 1)
    return (num_stages - 1) - t * num_stages // num_train_timesteps


class _Block(nn.Module):
    """Pre-LayerNorm residual self-attention over the 2S tokens of one identity."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (1, 2S, W) -> (1, 2S, W)."""
        h = self.norm(x)
        return x + self.attn(h, h, h, need_weights=False)[0]


class StageTokens(nn.Module):
    """P (D,) -> S (key, value) token pairs (S, 2, D); trains in place of P (Sec. III-C).

    Args:
        word: (D,) the initializer word's token embedding P; kept as a parameter that does
            not train (the method freezes it), saved with the module as the identity's word.
        num_stages: S, the number of (key, value) pairs (5 in the paper).
        width: the module's inner width W.
        heads: attention heads of the two self-attention layers (W must divide by it).
        ff_mult: hidden width of the feed-forward layer, in multiples of W.
    """

    def __init__(self, word: torch.Tensor, num_stages: int = 5, width: int = 768,
                 heads: int = 8, ff_mult: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"stage-token width {width} is not divisible by heads={heads}")
        dim = word.shape[-1]
        self.num_stages = num_stages
        self.hparams = {"num_stages": num_stages, "width": width, "heads": heads,
                        "ff_mult": ff_mult}
        self.word = nn.Parameter(word.detach().clone().float().reshape(dim))
        self.slots = nn.Parameter(torch.zeros(2 * num_stages, dim))
        self.in_proj = nn.Linear(dim, width)
        self.blocks = nn.Sequential(_Block(width, heads), _Block(width, heads))
        self.ff_norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff_mult * width), nn.GELU(),
                                nn.Linear(ff_mult * width, width))
        self.out_proj = nn.Linear(width, dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self) -> torch.Tensor:
        """The identity's tokens (S, 2, D): [:, 0] the key tokens P_i^K, [:, 1] the value
        tokens P_i^V, stage i = row i."""
        inputs = self.word + self.slots  # (2S, D)
        x = self.blocks(self.in_proj(inputs)[None])  # (1, 2S, W)
        x = x + self.ff(self.ff_norm(x))
        tokens = inputs + self.out_proj(x[0])  # (2S, D)
        return tokens.view(self.num_stages, 2, -1)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], hparams: dict[str, int],
                   prefix: str = "") -> "StageTokens":
        """A module with the weights ``state`` (keys ``prefix + name``, as saved) and the
        sizes ``hparams`` (``self.hparams`` of the module that was saved)."""
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module = cls(own["word"], **hparams)
        module.load_state_dict(own)
        return module
