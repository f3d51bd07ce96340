"""Attention processors, face masks and the attention-map store.

One module per processor (`masked_text.MaskedTextAttnProcessor`,
`decoupled.DecoupledAttnProcessor`), the steps they share (`core`), their per-batch inputs
(`context.AttentionContext`), multiply mode's virtual keys (`virtual`) and installing them
on a diffusers model (`install`).
"""
from ldm_ext.attention.context import AttentionContext
from ldm_ext.attention.decoupled import DecoupledAttnProcessor
from ldm_ext.attention.install import decoupled_modules, install_processors
from ldm_ext.attention.masked_text import MaskedTextAttnProcessor
from ldm_ext.attention.masks import (FaceMasks, TokenLayout, box_masks, build_face_masks,
                                     expand_boxes)
from ldm_ext.attention.store import AttentionStore

__all__ = [
    "AttentionContext", "AttentionStore", "DecoupledAttnProcessor", "FaceMasks",
    "MaskedTextAttnProcessor", "TokenLayout", "box_masks", "build_face_masks",
    "decoupled_modules", "expand_boxes", "install_processors",
]
