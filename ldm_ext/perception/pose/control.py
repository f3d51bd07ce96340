"""InstantFamily's control image (Sec. 3.5, 4.2): the OpenPose rendering of *all* people
plus a filled circle, coloured by stacking slot, at each selected face's centre.
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from .draw import draw_people
from .face_boxes import face_box
from .keypoints import Person

# One colour per stacking slot. Channels avoid OpenPose's palette ({0, 85, 170, 255} and
# x0.6 of it, limbs) and white (face points), so circles are never confused with skeletons.
# Training shows the first N (num_slots, 4 in the paper); slots beyond the table get
# generated colours (``slot_color``).
SLOT_COLORS: list[tuple[int, int, int]] = [
    (224, 32, 32), (32, 224, 32), (32, 32, 224), (224, 224, 32), (224, 32, 224),
    (32, 224, 224), (224, 128, 32), (128, 32, 224), (32, 128, 224), (128, 224, 32),
    (224, 32, 128), (32, 224, 128),
]
GOLDEN_RATIO = (math.sqrt(5.0) - 1.0) / 2.0  # hue step of generated colours


def circle_radius(box: np.ndarray) -> int:
    """Default slot-circle radius: a quarter of the face box's shorter side (xyxy px)."""
    return int(_radii(np.asarray(box)[None])[0])


def _radii(boxes: np.ndarray) -> np.ndarray:
    """(K,) default radii (``circle_radius``) of (K, 4) boxes: rounded half to even, >= 2."""
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return np.maximum(np.rint(0.25 * sides), 2).astype(np.int64)


def slot_color(slot: int) -> tuple[int, int, int]:
    """RGB colour of stacking slot ``slot`` >= 0: ``SLOT_COLORS[slot]``, and beyond the table
    a generated one, so any number of identities can be drawn (InstantFamily Sec. 3.5, Fig. 6:
    more identities than trained slots). Generated colours step the hue by the golden ratio
    (successive slots far apart, deterministic) at saturation 0.75 and value 0.88: channels
    224 and 56, which are neither in OpenPose's palette nor in the table, so a generated
    colour is never a skeleton's or another slot's."""
    if slot < 0:
        raise ValueError(f"slot {slot} has no colour (slots start at 0)")
    if slot < len(SLOT_COLORS):
        return SLOT_COLORS[slot]
    rgb = colorsys.hsv_to_rgb((slot * GOLDEN_RATIO) % 1.0, 0.75, 0.88)
    return tuple(int(round(255 * c)) for c in rgb)


def draw_slot_circle(canvas: np.ndarray, box: np.ndarray, slot: int,
                     radius: int | None = None) -> None:
    """Filled ``slot_color(slot)`` circle at the centre of face ``box`` (xyxy px), in
    place; ``radius`` defaults to ``circle_radius(box)``."""
    draw_slot_circles(canvas, np.asarray(box)[None], [slot], radius)


def draw_slot_circles(canvas: np.ndarray, boxes: np.ndarray, slots: list[int],
                      radius: int | None = None) -> None:
    """``draw_slot_circle`` for each of the (K, 4) ``boxes`` and its slot, in order, with
    the centres (rounded half to even) and radii of all computed at once."""
    centres = np.rint((boxes[:, :2] + boxes[:, 2:]) / 2).astype(np.int64).tolist()
    radii = _radii(boxes).tolist() if radius is None else [radius] * len(slots)
    for (x, y), r, slot in zip(centres, radii, slots):
        cv2.circle(canvas, (x, y), r, slot_color(slot), thickness=-1)


def render_control_image(people: list[Person], hw: tuple[int, int],
                         circle_slots: list[int | None], radius: int | None = None,
                         out: np.ndarray | None = None) -> np.ndarray:
    """InstantFamily control image (Sec. 4.2): (H, W, 3) uint8 RGB on black.

    Args:
        people: everyone in the image; all get their OpenPose skeleton (body + face),
            drawn as controlnet_aux draws it (``draw``).
        hw: (height, width) in pixels, the frame of the keypoints and of the image.
        circle_slots: per person, the stacking slot k of its face (a filled circle of
            ``slot_color(k)`` at the face centre) or None (skeleton only).
        radius: circle radius in pixels; default proportional to each face's size.
        out: a black, C-contiguous (H, W, 3) uint8 canvas to draw on (e.g. a slice of a
            batch tensor), instead of a new one.
    """
    if len(circle_slots) != len(people):
        raise ValueError(f"{len(circle_slots)} circle slots for {len(people)} people")
    canvas = np.zeros((*hw, 3), dtype=np.uint8) if out is None else out
    if canvas.shape != (*hw, 3) or not canvas.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous ({hw[0]}, {hw[1]}, 3) array")
    draw_people(canvas, people, hw)
    for person, slot in zip(people, circle_slots):
        if slot is None:
            continue
        box = face_box(person, margin=0.0)
        if box is None:
            raise ValueError("a person selected for a circle has no face or head keypoints")
        draw_slot_circle(canvas, box, slot, radius)
    return canvas
