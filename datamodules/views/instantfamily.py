"""InstantFamily's per-sample inputs (docs/methods.md §1, paper Sec. 4.2)."""
from __future__ import annotations

import numpy as np
import torch

from datamodules.schema import Sample
from datamodules.views.common import (SIGNED, UNIT, ControlDrawing, draw_controls, floats,
                                      normalized_boxes, pad_slots, select_slots,
                                      stack_images, valid_slots)
from ldm_ext.perception.pose import face_box


class InstantFamilyView:
    """InstantFamily inputs.

    Per batch (``collate``)::

        pixel_values (B, 3, R, R) float in [-1, 1]
        control      (B, 3, R, R) float in [0, 1]  skeleton of ALL people + circle of colour
                                                   k at the face centre of slot k
        caption      list[str]
        key          list[str]                     the samples' ``__key__`` (logging, checks)
        face_crops   (B, N, 3, 160, 160) float in [-1, 1], zeros for empty slots
        face_boxes   (B, N, 4) float xyxy / (W, H, W, H) of the whole detector box (may
                     overhang [0, 1] when the face is cut), zeros for empty slots
        face_valid   (B, N) bool

    Per sample (``__call__``) images stay uint8 and unpadded: ``pixel_values`` the
    transformed (R, R, 3) image array (a view: a flipped one has a negative column stride),
    ``face_crops`` (n <= N, 3, 160, 160) and ``control`` a :class:`ControlDrawing`.
    ``collate`` writes each into its batch tensor once and converts the whole batch to float
    in one pass. With ``float_batches=False`` batches stay uint8 and ``normalize`` converts
    them later, e.g. on the GPU after the transfer (``ShardDataModule(float_on_device=True)``).

    A selected face whose person is unknown (or has no face/head keypoints left after the
    crop) gets its circle at the centre of its detector box's visible part.
    """

    optional = ()  # face regions come from boxes / keypoints, not from masks.png
    ranges = {"pixel_values": SIGNED, "control": UNIT, "face_crops": SIGNED}

    def __init__(self, num_slots: int = 4, float_batches: bool = True):
        self.num_slots, self.float_batches = num_slots, float_batches

    def control(self, sample: Sample, slots: list[int]) -> ControlDrawing:
        """The control image for the faces in ``slots`` (slot k = ``slots[k]``): circles
        at the person's face keypoint box (as ``render_control_image`` places them), else
        at the detector box's visible part."""
        circles = []
        for k, (face, person) in enumerate(zip(slots, sample.face_person[slots].tolist())):
            box = face_box(sample.people[person], margin=0.0) if person >= 0 else None
            if box is None:  # the visible part of the detector box
                h, w = sample.hw
                box = np.clip(sample.boxes[face], 0, np.float32([w, h, w, h]))
            circles.append((k, box))
        return ControlDrawing(sample.people, circles, sample.hw)

    def __call__(self, sample: Sample, rng: torch.Generator) -> dict:
        slots = select_slots(sample.num_faces, self.num_slots, rng)
        return {"pixel_values": sample.image,  # (R, R, 3)
                "control": self.control(sample, slots), "caption": sample.caption,
                "key": sample.key, "face_crops": torch.from_numpy(sample.crops[slots]),
                "face_boxes": normalized_boxes(sample, slots, self.num_slots, clip=False),
                "face_valid": valid_slots(len(slots), self.num_slots)}

    def collate(self, items: list[dict]) -> dict:
        """One batch: tensors stacked, strings listed, control images drawn and face crops
        padded in place; images made float by ``normalize`` unless ``float_batches`` is off."""
        batch = {"caption": [i["caption"] for i in items], "key": [i["key"] for i in items],
                 "face_boxes": torch.stack([i["face_boxes"] for i in items]),
                 "face_valid": torch.stack([i["face_valid"] for i in items]),
                 "pixel_values": stack_images(items, "pixel_values"),
                 "control": draw_controls(items),
                 "face_crops": pad_slots(items, "face_crops", self.num_slots)}
        return self.normalize(batch) if self.float_batches else batch

    def normalize(self, batch: dict) -> dict:
        """The uint8 images of a collated batch as float (on the batch's device):
        pixel_values and face_crops to [-1, 1] (empty slots 0), control to [0, 1]."""
        return floats(batch, self.ranges)
