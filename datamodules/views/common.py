"""Pieces every per-method view shares: slot choice, control drawings, batch stacking and the
uint8 -> float conversion of a collated batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info

from datamodules.schema import Sample
from ldm_ext.perception.pose import Person, draw_slot_circles, render_control_image

# 1 / 127.5 rounded down in float32, so that 255 maps to <= 1.0 (not 1 + 1 ulp)
PIXEL_SCALE = float(np.nextafter(np.float32(1 / 127.5), np.float32(0)))
SIGNED, UNIT, BINARY = "signed", "unit", "binary"  # uint8 -> [-1, 1], [0, 1], {0, 1}
RANGES = {SIGNED: (PIXEL_SCALE, -1.0), UNIT: (1 / 255, 0.0), BINARY: (1.0, 0.0)}


class View(Protocol):
    """What ``ShardStream`` needs of a per-method view."""

    optional: tuple[str, ...]  # optional shard members it reads (schema.OPTIONAL_KEYS)

    def __call__(self, sample: Sample, rng: torch.Generator) -> dict: ...

    def collate(self, items: list[dict]) -> dict: ...

    def normalize(self, batch: dict) -> dict: ...


def select_slots(num_faces: int, num_slots: int, rng: torch.Generator) -> list[int]:
    """Faces to stack, in slot order: ``min(N, F)`` faces at random, in random order.

    InstantFamily Sec. 4.2: random order so that every slot learns, not just the first.
    (Cut as a list: each torch call costs tens of microseconds in the loader's stream.)
    """
    return torch.randperm(num_faces, generator=rng).tolist()[:num_slots]


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
        render_control_image(self.people, self.hw, [None] * len(self.people), out=canvas)
        if self.circles:
            slots, boxes = zip(*self.circles)
            draw_slot_circles(canvas, np.stack(boxes), list(slots))
        return canvas

    def render(self) -> np.ndarray:
        """The control image on a new canvas."""
        return self.draw(np.zeros((*self.hw, 3), np.uint8))


def normalized_boxes(sample: Sample, faces: list[int], num_slots: int,
                     clip: bool = True) -> torch.Tensor:
    """(N, 4) float xyxy / (W, H, W, H) of ``faces`` in slot order, zeros for empty slots;
    clipped to [0, 1] (the visible part) unless ``clip`` is False. Unclipped, a face cut by
    the crop keeps its whole box, so a margin added later (InstantFamily's 25 %,
    ``build_face_masks``) grows the raw box, not its visible part."""
    h, w = sample.hw
    boxes = np.zeros((num_slots, 4), np.float32)  # numpy: cheaper than torch for 4 numbers
    boxes[: len(faces)] = sample.boxes[faces] / np.float32([w, h, w, h])
    if clip:
        boxes = np.clip(boxes, 0, 1)
    return torch.from_numpy(boxes)


def valid_slots(count: int, num_slots: int) -> torch.Tensor:
    """(N,) bool: the first ``count`` slots are filled."""
    return torch.from_numpy(np.arange(num_slots) < count)


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype, zeroed: bool = False) -> torch.Tensor:
    """A tensor for a collated batch (uninitialised unless ``zeroed``). In a DataLoader
    worker it lives in shared memory, as torch's ``default_collate`` allocates its batches:
    the worker's queue then sends a handle instead of copying the batch (about 2 MB per
    sample at 512 px). Elsewhere a zeroed one comes from ``np.zeros``, whose fresh pages the
    kernel zeroes lazily, where ``torch.zeros`` would write every byte once more."""
    empty = torch.empty(0, dtype=dtype)
    if get_worker_info() is None:
        return torch.from_numpy(np.zeros(shape, empty.numpy().dtype)) if zeroed else \
            torch.empty(shape, dtype=dtype)
    storage = empty.untyped_storage()._new_shared(int(np.prod(shape)) * empty.element_size())
    out = empty.set_(storage).view(shape)
    return out.zero_() if zeroed else out


def stack_images(items: list[dict], key: str) -> torch.Tensor:
    """(B, 3, H, W) uint8 view of a contiguous (B, H, W, 3) stack of the (H, W, 3) uint8
    images ``item[key]``: one copy per image, channels-last memory as the images were
    decoded. A mirrored view (negative column stride: ``ResizeCrop``'s flip) is mirrored
    back by OpenCV as it is copied, so a flip costs no pass over the image of its own."""
    out = batch_tensor((len(items), *items[0][key].shape), torch.uint8)
    for slot, item in zip(out.numpy(), items):
        image = item[key]
        if image.strides[1] < 0:
            cv2.flip(image[:, ::-1], 1, dst=slot)
        else:
            slot[...] = image
    return out.permute(0, 3, 1, 2)


def draw_controls(items: list[dict], key: str = "control") -> torch.Tensor:
    """(B, 3, H, W) uint8: each item's ``ControlDrawing`` drawn into one batch buffer."""
    controls = batch_tensor((len(items), *items[0][key].hw, 3), torch.uint8, zeroed=True)
    for canvas, item in zip(controls.numpy(), items):
        item[key].draw(canvas)
    return controls.permute(0, 3, 1, 2)


def pad_slots(items: list[dict], key: str, num_slots: int) -> torch.Tensor:
    """(B, N, ...) of each item's (n <= N, ...) ``item[key]``, zeros in empty slots (written
    through numpy: torch's slicing and copies cost several times more per call)."""
    first = items[0][key]
    padded = batch_tensor((len(items), num_slots, *first.shape[1:]), first.dtype)
    for out, item in zip(padded.numpy(), items):
        n = len(item[key])
        out[:n] = item[key].numpy()
        out[n:] = 0
    return padded


def to_float(images: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """Contiguous float32 ``offset + scale * images`` of a uint8 tensor of any strides, with
    one fused ``torch.add``: every pixel is read and written once."""
    out = torch.empty(images.shape, device=images.device)
    return torch.add(torch.tensor(offset, device=images.device), images, alpha=scale, out=out)


def floats(batch: dict, ranges: dict[str, str], valid: str = "face_valid") -> dict:
    """A copy of a collated batch with its uint8 images as float32 (on the batch's device).

    ``ranges`` maps each key to ``SIGNED`` ([-1, 1]), ``UNIT`` ([0, 1]) or ``BINARY``
    ({0, 1}). A (B, N, ...) key's empty slots (``batch[valid]`` False) become 0.
    """
    batch = dict(batch)
    for key, kind in ranges.items():
        out = to_float(batch[key], *RANGES[kind])
        if kind == SIGNED and out.dim() == 5:  # (B, N, C, H, W) slots
            out.mul_(batch[valid][:, :, None, None, None])
        batch[key] = out
    return batch
