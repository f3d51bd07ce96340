"""Per-method views: what a method's LightningModule consumes, per sample and collated.

A view is called as ``view(sample, rng) -> dict`` on a transformed ``Sample`` (square, R x R)
with the sample's own generator, and ``view.collate(items) -> batch``. Add a method's view to
``VIEWS``.
"""
from __future__ import annotations

import numpy as np
import torch

from datamodules.schema import Sample
from ldm_ext.pose import render_control_image


def select_slots(num_faces: int, num_slots: int, rng: torch.Generator) -> list[int]:
    """Faces to stack, in slot order: ``min(N, F)`` faces at random, in random order.

    InstantFamily Sec. 4.2: random order so that every slot learns, not just the first.
    """
    return torch.randperm(num_faces, generator=rng)[:num_slots].tolist()


class InstantFamilyView:
    """InstantFamily inputs (METHODS.md §1, paper Sec. 4.2).

    Per sample::

        pixel_values (3, R, R) float in [-1, 1]
        control      (3, R, R) float in [0, 1]  skeleton of ALL people + circle of colour k
                                                at the face centre of slot k
        caption      str
        face_crops   (N, 3, 160, 160) float in [-1, 1], zeros for empty slots
        face_boxes   (N, 4) float xyxy in [0, 1] of the detector box, zeros for empty slots
        face_valid   (N,) bool

    A selected face without a person gets its circle at its box centre.
    """

    name = "instantfamily"

    def __init__(self, num_slots: int = 4):
        self.num_slots = num_slots

    def control(self, sample: Sample, slots: list[int]) -> np.ndarray:
        """(R, R, 3) uint8 control image for the faces in ``slots``."""
        circles: list[int | None] = [None] * len(sample.people)
        for k, face in enumerate(slots):
            person = int(sample.face_person[face])
            if person >= 0:
                circles[person] = k
        orphans = {k: sample.boxes[f] for k, f in enumerate(slots) if sample.face_person[f] < 0}
        return render_control_image(sample.people, sample.hw, circles, orphans)

    def __call__(self, sample: Sample, rng: torch.Generator) -> dict:
        n, (h, w) = self.num_slots, sample.hw
        slots = select_slots(sample.num_faces, n, rng)
        crops = torch.zeros(n, *sample.crops.shape[1:])
        boxes = torch.zeros(n, 4)
        crops[: len(slots)] = torch.from_numpy(sample.crops[slots]).float() / 127.5 - 1
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        boxes[: len(slots)] = (torch.from_numpy(sample.boxes[slots]) / scale).clamp(0, 1)
        image = torch.from_numpy(sample.image).permute(2, 0, 1).float()  # (3, R, R)
        control = torch.from_numpy(self.control(sample, slots)).permute(2, 0, 1).float()
        return {"pixel_values": image / 127.5 - 1, "control": control / 255,
                "caption": sample.caption, "key": sample.key, "face_crops": crops,
                "face_boxes": boxes, "face_valid": torch.arange(n) < len(slots)}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        """Stack tensors along a new batch axis; strings become lists."""
        return {k: torch.stack([i[k] for i in items]) if torch.is_tensor(items[0][k])
                else [i[k] for i in items] for k in items[0]}


VIEWS = {InstantFamilyView.name: InstantFamilyView}


def build_view(name: str, **kwargs) -> InstantFamilyView:
    """The view registered as ``name`` (``VIEWS``), built with ``kwargs``."""
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; known: {sorted(VIEWS)}")
    return VIEWS[name](**kwargs)
