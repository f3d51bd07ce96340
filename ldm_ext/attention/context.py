"""`AttentionContext`: the per-batch inputs every processor of this package reads.

diffusers hands `cross_attention_kwargs` to self- and cross-attention layers alike, so a
batch's masks, image tokens, split values and map store travel together as one
`cross_attention_kwargs={"ctx": ctx}`; a field left None switches its feature off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ldm_ext.attention.masks import FaceMasks, query_grid
from ldm_ext.attention.store import AttentionStore


@dataclass
class AttentionContext:
    """Per-batch inputs of every processor, passed as cross_attention_kwargs={"ctx": ctx}."""

    face_masks: FaceMasks | None = None  # masked cross-attention (InstantFamily)
    image_tokens: Tensor | None = None  # (B, M, D_img) decoupled layers (IP-Adapter/StoryMaker)
    ip_scale: float = 1.0  # gamma of StoryMaker Eq. 3
    # (B, 1, 1, M) bool, True = attend: image tokens each sample's decoupled layers see
    # (e.g. the token groups of absent characters are False); None: all of them
    image_mask: Tensor | None = None
    value_states: Tensor | None = None  # (B, T, D) split K/V (SeFi-IDE): values from this
    # tag -> other key inputs (B, T, D): the softmax of the layer's own queries against each
    # is recorded, detached, as "<name>:<tag>" when the store wants it; the layer's output
    # never sees them (a reference map computed in the same pass, e.g. SeFi-IDE Eq. 4)
    probe_states: dict[str, Tensor] | None = None
    store: AttentionStore | None = None
    latent_hw: tuple[int, int] | None = None  # full-resolution latent grid, for maps
    # (identity of the encoder states, them, the inputs built from them) of `virtual.virtual_inputs`
    _virtual: tuple | None = field(default=None, init=False, repr=False)
    # id(layer or processor) -> (tag, sources, keys and values) of `reuse.reused`
    _reused: dict = field(default_factory=dict, init=False, repr=False)

    def grid(self, num_queries: int) -> tuple[int, int]:
        """(h, w) of a layer's query grid, from latent_hw (or the face masks' grid)."""
        hw = self.latent_hw
        if hw is None and self.face_masks is not None:
            hw = self.face_masks.latent_hw
        return query_grid(num_queries, hw)


NO_EXTRAS = AttentionContext()
