"""PortraitBooth's per-sample inputs (docs/methods.md §4): the subject's reference face (from
another frame of the clip when the shard has one), its box for DIP's crop of x̂0 (Eq. 6) and
its face mask for ECAC (Eq. 7) and the face-restricted noise loss."""
from __future__ import annotations

import numpy as np
import torch

from datamodules.schema import MASK_SEG, Sample
from datamodules.views.common import (BINARY, SIGNED, floats, normalized_boxes,
                                      pad_slots, stack_images, valid_slots)
from ldm_ext.perception.segmenters import EllipseSegmenter


class PortraitBoothView:
    """PortraitBooth inputs: the subjects are the N largest faces, largest first (the paper
    trains with one subject, the clip's; N > 1 keeps the slots of a multi-subject image).

    Per batch (``collate``)::

        pixel_values  (B, 3, R, R) float in [-1, 1]
        caption, key  list[str]     captions name each subject as man / woman (STEA's tokens)
        reference     (B, N, 3, 160, 160) float in [-1, 1]: the face STEA and DIP encode
                      (subject 0: the shard's other-frame ``reference.npy`` when present,
                      else its own crop; other subjects: their own crop), 0 when empty
        face_boxes    (B, N, 4) float xyxy in [0, 1]: where DIP crops x̂0
        face_masks    (B, N, R, R) float {0, 1}: the face-parsing mask M (``MASK_SEG``; the
                      inscribed ellipse when the shard has no masks)
        face_valid    (B, N) bool

    The 10 % text-only / 10 % unconditional samples and the face-restricted noise loss on
    half of the samples are training-step choices, not the view's.

    Args:
        num_slots: subjects per sample N.
        float_batches: ``collate`` returns float images (else uint8, see ``normalize``).
    """

    optional = ("masks.png", "reference.npy")
    ranges = {"pixel_values": SIGNED, "reference": SIGNED, "face_masks": BINARY}

    def __init__(self, num_slots: int = 1, float_batches: bool = True):
        self.num_slots, self.float_batches = num_slots, float_batches

    def __call__(self, sample: Sample, rng: torch.Generator) -> dict:
        faces = list(range(min(self.num_slots, sample.num_faces)))  # largest first
        reference = sample.crops[faces]
        if sample.reference is not None and faces:
            reference = reference.copy()
            reference[0] = sample.reference
        masks = EllipseSegmenter()(sample.image, sample.boxes[faces]) if sample.masks is None \
            else (sample.masks[faces] & MASK_SEG) > 0
        return {"pixel_values": sample.image, "caption": sample.caption,
                "key": sample.key, "reference": torch.from_numpy(reference),
                "face_boxes": normalized_boxes(sample, faces, self.num_slots),
                "face_masks": torch.from_numpy(masks.astype(np.uint8)),
                "face_valid": valid_slots(len(faces), self.num_slots)}

    def collate(self, items: list[dict]) -> dict:
        """One batch: images stacked, per-subject tensors padded."""
        batch = {"caption": [i["caption"] for i in items], "key": [i["key"] for i in items],
                 "face_boxes": torch.stack([i["face_boxes"] for i in items]),
                 "face_valid": torch.stack([i["face_valid"] for i in items]),
                 "pixel_values": stack_images(items, "pixel_values")}
        for key in ("reference", "face_masks"):
            batch[key] = pad_slots(items, key, self.num_slots)
        return self.normalize(batch) if self.float_batches else batch

    def normalize(self, batch: dict) -> dict:
        """The uint8 tensors of a collated batch as float (on the batch's device)."""
        return floats(batch, self.ranges)
