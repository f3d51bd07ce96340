"""Character masks (StoryMaker, docs/methods.md §3) for prepare's shards and the pipeline.

A character is the person a face belongs to: face, hair, body and clothes. StoryMaker's
attention loss (Eq. 9–12) compares each character's attention with its mask ``M_k`` and the
background's with ``1 - union``; its reference is the character cut out on white
(``character_crop``).

**Decision** (the paper used an internal instance segmentation model): a character's
pixels are those a human parser labels as a person inside the character's region, that are
nearer to this character's pose hull than to any other person's (faces always keep their
own ellipse). The pose hull (skeleton hull and face ellipse, dilated) is also the fallback
mask when no parser is available (``pose-hull``), and the seed that splits touching people
between them.
"""
from __future__ import annotations

from typing import Callable, Protocol

import cv2
import numpy as np

from ldm_ext.perception.face_region import FACE_MARGIN
from ldm_ext.perception.pose import Person

TORSO = (1.5, 0.5, 5.0)  # region guess below a face: half-width, top, bottom in face sizes


class Characters(Protocol):
    """Character masks: ``(image, boxes (F, 4), people, face_person) -> (F, H, W) bool``."""

    name: str

    def __call__(self, image: np.ndarray, boxes: np.ndarray, people: list[Person],
                 face_person: np.ndarray) -> np.ndarray: ...


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _fill_hull(mask: np.ndarray, person: Person | None) -> bool:
    """Fill the convex hull of ``person``'s visible body keypoints into ``mask`` (uint8, in
    place); False, drawing nothing, below 3 points."""
    points = np.zeros((0, 2)) if person is None else person.body[person.body[:, 2] > 0, :2]
    if len(points) < 3:
        return False
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 1)
    return True


def hull_mask(hw: tuple[int, int], person: Person | None, box: np.ndarray) -> np.ndarray:
    """(H, W) bool: the face ellipse (box enlarged by 25 %) and the person's skeleton hull,
    dilated by half the enlarged face's shorter half-side when there is a skeleton."""
    mask = np.zeros(hw, np.uint8)
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * (1 + FACE_MARGIN)
    cv2.ellipse(mask, tuple(int(v) for v in centre), tuple(max(1, int(v)) for v in half),
                0, 0, 360, 1, thickness=-1)
    if _fill_hull(mask, person):
        mask = cv2.dilate(mask, _disk(max(1, int(half.min()))))
    return mask.astype(bool)


def _skeleton(hw: tuple[int, int], person: Person) -> np.ndarray:
    """(H, W) bool hull of a person's visible body keypoints (empty below 3 points)."""
    mask = np.zeros(hw, np.uint8)
    _fill_hull(mask, person)
    return mask.astype(bool)


def seeds(hw: tuple[int, int], boxes: np.ndarray, people: list[Person],
          face_person: np.ndarray) -> np.ndarray:
    """(F + P', H, W) bool: the hull of each face's character, then the skeleton hull of
    each of the P' people no face belongs to (they claim their own pixels too)."""
    faces = [hull_mask(hw, people[p] if p >= 0 else None, box)
             for box, p in zip(np.asarray(boxes, np.float32), face_person)]
    linked = set(int(p) for p in face_person)
    others = [_skeleton(hw, person) for p, person in enumerate(people) if p not in linked]
    return np.stack(faces + others) if faces or others else np.zeros((0, *hw), bool)


def owners(seeds: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(H, W) int: the index of the seed nearest each pixel (Euclidean distance to its
    pixels), except inside a face's ellipse (box + 25 %), which belongs to that face (to
    the face whose ellipse it is deepest in, where ellipses overlap): another person's
    dilated body hull may cover a face, never take it."""
    hw = seeds.shape[1:]
    owner = np.zeros(hw, np.int64)
    if len(seeds) > 1:
        owner = np.stack([cv2.distanceTransform((~seed).astype(np.uint8), cv2.DIST_L2, 3)
                          for seed in seeds]).argmin(axis=0)  # (S, H, W) -> (H, W)
    if len(boxes):
        boxes = np.asarray(boxes, np.float32)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = np.maximum((boxes[:, 2:] - boxes[:, :2]) / 2 * (1 + FACE_MARGIN), 1)
        ys, xs = np.ogrid[:hw[0], :hw[1]]
        depth = (((xs - centre[:, :1, None]) / half[:, :1, None]) ** 2
                 + ((ys - centre[:, 1:, None]) / half[:, 1:, None]) ** 2)  # (F, H, W), <= 1 in
        inside = depth.min(axis=0) <= 1
        owner[inside] = depth.argmin(axis=0)[inside]
    return owner


def keep_owned(masks: np.ndarray, seeds: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(F, H, W) bool: ``masks[f]`` where face ``f``'s character owns the pixel (``owners``);
    a pixel goes to one character at most. ``seeds`` (S >= F) start with the F faces'."""
    owner = owners(seeds, boxes)
    return masks & (owner[None] == np.arange(len(masks))[:, None, None])


def regions(hulls: np.ndarray, boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(F, 4) int xyxy region where each character is parsed: its hull's extent and a torso
    guess below its face (``TORSO``), clipped to the image."""
    out = np.zeros((len(boxes), 4), np.int64)
    for region, hull, (x0, y0, x1, y1) in zip(out, hulls, np.asarray(boxes, np.float32)):
        w, h, cx = x1 - x0, y1 - y0, (x0 + x1) / 2
        guess = [cx - TORSO[0] * w, y0 - TORSO[1] * h, cx + TORSO[0] * w, y1 + TORSO[2] * h]
        ys, xs = np.nonzero(hull)
        if len(xs):
            guess = [min(guess[0], xs.min()), min(guess[1], ys.min()),
                     max(guess[2], xs.max() + 1), max(guess[3], ys.max() + 1)]
        region[:] = np.clip(np.round(guess), 0, [hw[1], hw[0], hw[1], hw[0]])
        region[2:] = np.maximum(region[2:], region[:2] + 1)
    return out


class HullCharacters:
    """Fallback character masks: each face's pose hull, touching hulls split by ``owners``."""

    name = "pose-hull"

    def __call__(self, image: np.ndarray, boxes: np.ndarray, people: list[Person],
                 face_person: np.ndarray) -> np.ndarray:
        """(F, H, W) bool character masks of the faces in ``boxes``."""
        found = seeds(image.shape[:2], boxes, people, face_person)
        return keep_owned(found[:len(boxes)], found, boxes)


class ParsedCharacters:
    """Character masks from a human parser (``parsing.HumanParser``): person
    pixels in each character's region that it ``owners``; a character the parser finds
    nothing of keeps its hull.

    Args:
        parser: ``(image, regions (F, 4) int) -> (F, H, W) bool`` person pixels per region,
            with a ``name``.
    """

    def __init__(self, parser: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.parser, self.name = parser, parser.name

    def __call__(self, image: np.ndarray, boxes: np.ndarray, people: list[Person],
                 face_person: np.ndarray) -> np.ndarray:
        """(F, H, W) bool character masks of the faces in ``boxes``."""
        found = seeds(image.shape[:2], boxes, people, face_person)
        hulls = found[:len(boxes)]
        parsed = self.parser(image, regions(hulls, boxes, image.shape[:2]))
        empty = ~parsed.any(axis=(1, 2))
        parsed[empty] = hulls[empty]
        return keep_owned(parsed, found, boxes)
