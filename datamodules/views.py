"""Per-method views: what a method's LightningModule consumes, per sample and collated.

A view is called as ``view(sample, rng) -> dict`` on a transformed ``Sample`` (square, R x R)
with the sample's own generator, and ``view.collate(items) -> batch``. Add a method's view to
``VIEWS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from datamodules.schema import Sample
from ldm_ext.pose import Person, draw_slot_circle, face_box, render_control_image


# 1 / 127.5 rounded down in float32, so that 255 maps to <= 1.0 (not 1 + 1 ulp)
PIXEL_SCALE = float(np.nextafter(np.float32(1 / 127.5), np.float32(0)))


class View(Protocol):
    """What ``ShardStream`` needs of a per-method view."""

    name: str
    optional: tuple[str, ...]  # optional shard members it reads (schema.OPTIONAL_KEYS)

    def __call__(self, sample: Sample, rng: torch.Generator) -> dict: ...

    def collate(self, items: list[dict]) -> dict: ...


def select_slots(num_faces: int, num_slots: int, rng: torch.Generator) -> list[int]:
    """Faces to stack, in slot order: ``min(N, F)`` faces at random, in random order.

    InstantFamily Sec. 4.2: random order so that every slot learns, not just the first.
    """
    return torch.randperm(num_faces, generator=rng)[:num_slots].tolist()


@dataclass
class ControlDrawing:
    """What one sample's control image shows. ``collate`` draws it straight into the
    batch tensor: a per-sample canvas and its copy into the batch would cost two more
    passes over memory, the data loader's main cost after JPEG decoding."""

    people: list[Person]
    circles: list[tuple[int, np.ndarray]]  # (slot, xyxy face box): circle at its centre
    hw: tuple[int, int]

    def draw(self, canvas: np.ndarray) -> np.ndarray:
        """Draw on a black C-contiguous (H, W, 3) uint8 ``canvas``; returns it."""
        render_control_image(self.people, self.hw[::-1], [None] * len(self.people), out=canvas)
        for k, box in self.circles:
            draw_slot_circle(canvas, box, k)
        return canvas

    def render(self) -> np.ndarray:
        """The control image on a new canvas."""
        return self.draw(np.zeros((*self.hw, 3), np.uint8))


class InstantFamilyView:
    """InstantFamily inputs (METHODS.md §1, paper Sec. 4.2).

    Per batch (``collate``)::

        pixel_values (B, 3, R, R) float in [-1, 1]
        control      (B, 3, R, R) float in [0, 1]  skeleton of ALL people + circle of colour
                                                   k at the face centre of slot k
        caption      list[str]
        key          list[str]                     the samples' ``__key__`` (logging, checks)
        face_crops   (B, N, 3, 160, 160) float in [-1, 1], zeros for empty slots
        face_boxes   (B, N, 4) float xyxy in [0, 1] of the detector box, zeros for empty slots
        face_valid   (B, N) bool

    Per sample (``__call__``) images stay uint8 and unpadded: ``pixel_values`` (3, R, R),
    ``face_crops`` (n <= N, 3, 160, 160) and ``control`` a :class:`ControlDrawing`.
    ``collate`` writes each into its batch tensor once and converts the whole batch to float
    in one pass. With ``float_batches=False`` batches stay uint8 and ``normalize`` converts
    them later, e.g. on the GPU after the transfer (``ShardDataModule(float_on_device=True)``).

    A selected face whose person is unknown (or has no face/head keypoints left after the
    crop) gets its circle at its detector box centre.
    """

    name = "instantfamily"
    optional = ()  # face regions come from boxes / keypoints, not from masks.png

    def __init__(self, num_slots: int = 4, float_batches: bool = True):
        self.num_slots, self.float_batches = num_slots, float_batches

    def control(self, sample: Sample, slots: list[int]) -> ControlDrawing:
        """The control image for the faces in ``slots`` (slot k = ``slots[k]``): circles
        at the person's face keypoint box (as ``render_control_image`` places them), else
        at the detector box."""
        circles = []
        for k, face in enumerate(slots):
            person = int(sample.face_person[face])
            box = face_box(sample.people[person], margin=0.0) if person >= 0 else None
            circles.append((k, sample.boxes[face] if box is None else box))
        return ControlDrawing(sample.people, circles, sample.hw)

    def __call__(self, sample: Sample, rng: torch.Generator) -> dict:
        n, (h, w) = self.num_slots, sample.hw
        slots = select_slots(sample.num_faces, n, rng)
        boxes = np.zeros((n, 4), np.float32)  # numpy: cheaper than torch for 4 numbers
        boxes[: len(slots)] = np.clip(sample.boxes[slots] / np.float32([w, h, w, h]), 0, 1)
        return {"pixel_values": torch.from_numpy(sample.image).permute(2, 0, 1),  # (3, R, R)
                "control": self.control(sample, slots), "caption": sample.caption,
                "key": sample.key, "face_crops": torch.from_numpy(sample.crops[slots]),
                "face_boxes": torch.from_numpy(boxes),
                "face_valid": torch.from_numpy(np.arange(n) < len(slots))}

    def collate(self, items: list[dict]) -> dict:
        """One batch: tensors stacked, strings listed, control images drawn and face crops
        padded in place; images made float by ``normalize`` unless ``float_batches`` is off."""
        first, size = items[0], len(items)
        batch = {"caption": [i["caption"] for i in items], "key": [i["key"] for i in items],
                 "face_boxes": torch.stack([i["face_boxes"] for i in items]),
                 "face_valid": torch.stack([i["face_valid"] for i in items])}
        # (B, 3, R, R) uint8 views of contiguous (B, R, R, 3) buffers
        batch["pixel_values"] = torch.stack([i["pixel_values"].permute(1, 2, 0)
                                             for i in items]).permute(0, 3, 1, 2)
        controls = np.zeros((size, *first["control"].hw, 3), np.uint8)  # lazily zeroed pages
        for canvas, item in zip(controls, items):
            item["control"].draw(canvas)
        batch["control"] = torch.from_numpy(controls).permute(0, 3, 1, 2)
        crops = torch.zeros(size, self.num_slots, *first["face_crops"].shape[1:],
                            dtype=torch.uint8)  # (B, N, 3, 160, 160)
        for padded, item in zip(crops, items):
            padded[: len(item["face_crops"])] = item["face_crops"]
        batch["face_crops"] = crops
        return self.normalize(batch) if self.float_batches else batch

    @staticmethod
    def normalize(batch: dict) -> dict:
        """The uint8 images of a collated batch as float (on the batch's device):
        pixel_values and face_crops to [-1, 1] (empty slots 0), control to [0, 1]."""
        batch = dict(batch)
        batch["pixel_values"] = to_float(batch["pixel_values"], PIXEL_SCALE, -1.0)
        batch["control"] = to_float(batch["control"], 1 / 255, 0.0)
        valid = batch["face_valid"][:, :, None, None, None]  # (B, N, 1, 1, 1)
        batch["face_crops"] = batch["face_crops"].float().mul_(PIXEL_SCALE).sub_(1).mul_(valid)
        return batch


def to_float(images: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """Contiguous float32 ``offset + scale * images`` of a uint8 (B, C, H, W) tensor of any
    strides, with one fused ``torch.add``: every pixel is read and written once."""
    out = torch.empty(images.shape, device=images.device)
    return torch.add(torch.tensor(offset, device=images.device), images, alpha=scale, out=out)


VIEWS = {InstantFamilyView.name: InstantFamilyView}


def build_view(name: str, **kwargs) -> View:
    """The view registered as ``name`` (``VIEWS``), built with ``kwargs``."""
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; known: {sorted(VIEWS)}")
    return VIEWS[name](**kwargs)
