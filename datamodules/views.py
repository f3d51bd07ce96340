"""Per-method views: what a method's LightningModule consumes, per sample and collated.

A view is called as ``view(sample, rng) -> dict`` on a transformed ``Sample`` (square, R x R)
with the sample's own generator, and ``view.collate(items) -> batch``. Add a method's view to
``VIEWS``.
"""
from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
import torch

from datamodules.schema import Sample
from ldm_ext.pose import SLOT_COLORS, face_center, render_control_image


class View(Protocol):
    """What ``ShardStream`` needs of a per-method view."""

    name: str

    def __call__(self, sample: Sample, rng: torch.Generator) -> dict: ...

    def collate(self, items: list[dict]) -> dict: ...


def select_slots(num_faces: int, num_slots: int, rng: torch.Generator) -> list[int]:
    """Faces to stack, in slot order: ``min(N, F)`` faces at random, in random order.

    InstantFamily Sec. 4.2: random order so that every slot learns, not just the first.
    """
    return torch.randperm(num_faces, generator=rng)[:num_slots].tolist()


def draw_box_circle(canvas: np.ndarray, box: np.ndarray, slot: int) -> None:
    """Filled ``SLOT_COLORS[slot]`` circle at a face box centre, in place; radius a quarter
    of the box's shorter side, like ``render_control_image``'s default for face keypoints."""
    centre = tuple(int(round(v)) for v in (box[:2] + box[2:]) / 2)
    radius = max(2, int(round(0.25 * min(box[2] - box[0], box[3] - box[1]))))
    cv2.circle(canvas, centre, radius, SLOT_COLORS[slot], thickness=-1)


class InstantFamilyView:
    """InstantFamily inputs (METHODS.md §1, paper Sec. 4.2).

    Per sample::

        pixel_values (3, R, R) float in [-1, 1]
        control      (3, R, R) float in [0, 1]  skeleton of ALL people + circle of colour k
                                                at the face centre of slot k
        caption      str
        key          str                        the sample's ``__key__`` (logging, checks)
        face_crops   (N, 3, 160, 160) float in [-1, 1], zeros for empty slots
        face_boxes   (N, 4) float xyxy in [0, 1] of the detector box, zeros for empty slots
        face_valid   (N,) bool

    A selected face whose person is unknown (or has no face/head keypoints left after the
    crop) gets its circle at its detector box centre.
    """

    name = "instantfamily"

    def __init__(self, num_slots: int = 4):
        self.num_slots = num_slots

    def control(self, sample: Sample, slots: list[int]) -> np.ndarray:
        """(R, R, 3) uint8 control image for the faces in ``slots``."""
        circles: list[int | None] = [None] * len(sample.people)
        loose = []  # (slot, face) drawn at the box centre
        for k, face in enumerate(slots):
            person = int(sample.face_person[face])
            if person >= 0 and face_center(sample.people[person]) is not None:
                circles[person] = k
            else:
                loose.append((k, face))
        h, w = sample.hw
        canvas = render_control_image(sample.people, (w, h), circles)
        for k, face in loose:
            draw_box_circle(canvas, sample.boxes[face], k)
        return canvas

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


def build_view(name: str, **kwargs) -> View:
    """The view registered as ``name`` (``VIEWS``), built with ``kwargs``."""
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; known: {sorted(VIEWS)}")
    return VIEWS[name](**kwargs)
