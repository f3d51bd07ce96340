"""Attention processors, face masks and the attention-map store (see processors.py)."""
from ldm_ext.attention.masks import (FaceMasks, TokenLayout, box_masks, build_face_masks,
                                     expand_boxes)
from ldm_ext.attention.processors import (AttentionContext, DecoupledAttnProcessor,
                                          IdAttnProcessor, decoupled_modules,
                                          install_processors)
from ldm_ext.attention.store import AttentionStore

__all__ = [
    "AttentionContext", "AttentionStore", "DecoupledAttnProcessor", "FaceMasks",
    "IdAttnProcessor", "TokenLayout", "box_masks", "build_face_masks", "decoupled_modules",
    "expand_boxes", "install_processors",
]
