"""Resize / crop / flip a ``Sample`` with its boxes, landmarks and pose keypoints aligned.

Geometry is torchvision.transforms.v2's keypoint geometry (``resize_keypoints``,
``crop_keypoints``, ``horizontal_flip_keypoints``), computed in numpy with the same float32
operations in the same order (scale, shift, then ``x -> -(x - (W - 1))``), so every point
lands on the same float32 value (``tests/test_transforms.py`` checks it against the
kernels): one numpy pass over every point of a sample costs a fraction of three torch
dispatches, and the loader transforms every training sample. Per-face masks go through
``F.resize`` / ``F.crop`` / ``F.horizontal_flip`` on ``tv_tensors.Mask``. Parameters are
drawn from the sample's own generator, so no global RNG is touched; the pixels go through
OpenCV with the same output size and crop (faster on one core), the flip as a mirrored view
that the view's collate mirrors back as it copies the image into the batch. Boxes ride along as
their two corners among the keypoints: torchvision's box kernels (format conversions,
clamping) cost about 0.2 ms per sample, 5 % of the whole loader, for four numbers per face.
We keep torchvision's box geometry: edges flip as ``x -> W - x`` (keypoints, pixel indices,
as ``x -> W - 1 - x``), but boxes are not clamped to the crop (torchvision's
``clamping_mode=None``): a face cut by the crop keeps its whole detector box, so that
InstantFamily's 25 % margin is added to the raw box and clipped only after
(``ldm_ext.attention.masks.build_face_masks``). Whether a face is kept depends on its
visible part (``min_face``).

A horizontal flip also swaps left/right identities: landmark eyes and mouth corners, OpenPose
body parts, and the 70 face keypoints (68-point layout + 2 pupils); face crops are mirrored
with the image so each crop still shows its face as drawn. Per-face masks (optional) move
as ``tv_tensors.Mask`` (nearest-neighbour resize).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from datamodules.schema import Sample
from ldm_ext.perception.pose import Person


def _swap(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Index permutation of ``n`` points exchanging each (left, right) pair."""
    perm = np.arange(n)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


LANDMARK_FLIP = _swap(5, [(0, 1), (3, 4)])  # eyes, mouth corners
BODY_FLIP = _swap(18, [(2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17)])
FACE_FLIP = _swap(70, [(i, 16 - i) for i in range(8)]  # jaw
                  + [(17 + i, 26 - i) for i in range(5)]  # eyebrows
                  + [(31, 35), (32, 34)]  # nostrils
                  + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
                  + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
                  + [(60, 64), (61, 63), (65, 67), (68, 69)])  # inner lips, pupils


def _resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 resized to ``hw``: area averaging down (antialiased), bilinear up."""
    if image.shape[:2] == hw:
        return image
    shrink = hw[0] < image.shape[0]
    return cv2.resize(image, hw[::-1], interpolation=cv2.INTER_AREA if shrink else
                      cv2.INTER_LINEAR)


def _mirror(crops: np.ndarray) -> np.ndarray:
    """(F, C, H, W) uint8 crops flipped left-right, contiguous (OpenCV flips the F*C*H rows
    several times faster than numpy copies a reversed view)."""
    if crops.size == 0:
        return crops
    return cv2.flip(crops.reshape(-1, crops.shape[-1]), 1).reshape(crops.shape)


def _points(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Every 2-D point of a sample in one (M, 2) float32 array: box corners (x0, y0),
    (x1, y1), landmarks, bodies, faces (in that order); and the people's (P,) confidences
    (bodies, then faces)."""
    bodies = [p.body for p in sample.people]
    faces = [p.face for p in sample.people if p.face is not None]
    xy = np.concatenate([sample.boxes.reshape(-1, 2), sample.landmarks.reshape(-1, 2),
                         *(k[:, :2] for k in bodies + faces)], dtype=np.float32)
    confidence = np.concatenate([k[:, 2] for k in bodies + faces]) if bodies else \
        np.zeros(0, np.float32)
    return xy, confidence


def _move(xy: np.ndarray, scale: np.ndarray, origin: np.ndarray, flip_size: int) -> None:
    """Points resized by ``scale`` (x, y), cropped at ``origin`` (left, top), flipped in a
    frame ``flip_size`` wide (0: not flipped), in place, with torchvision's keypoint kernels'
    float32 operations: multiply, subtract, ``x -> -(x - (W - 1))`` (a point on the last
    column becomes -0.0, as there)."""
    np.multiply(xy, scale, out=xy)
    np.subtract(xy, origin, out=xy)
    if flip_size:
        x = xy[:, 0]
        np.negative(np.subtract(x, np.float32(flip_size - 1), out=x), out=x)


def _boxes(corners: np.ndarray, flip: bool) -> np.ndarray:
    """(F, 4) xyxy boxes from their moved (2F, 2) corners, as torchvision moves boxes: a
    flipped corner is an edge (``W - x``, one more than the keypoint's ``W - 1 - x``) and
    swaps left for right; not clamped, so a box may overhang the crop."""
    boxes = corners.reshape(-1, 4)
    if flip:
        boxes = boxes[:, [2, 1, 0, 3]] + np.float32([1, 0, 1, 0])
    return boxes


@functools.lru_cache(maxsize=64)
def _flip_order(bodies: int, faces: int) -> np.ndarray:
    """Index permutation of the people's points (``bodies`` x 18, then ``faces`` x 70) that
    swaps left and right parts (cached: a handful of layouts recur; never written to)."""
    return np.concatenate([BODY_FLIP + 18 * i for i in range(bodies)] +
                          [FACE_FLIP + 18 * bodies + 70 * i for i in range(faces)])


def _people(people: list[Person], xy: np.ndarray, confidence: np.ndarray, size: int,
            flip: bool) -> list[Person]:
    """People with their moved (P, 2) points ``xy`` (bodies, then faces); points outside
    the image lose their confidence. All in one array: a person's body and face are views
    of it."""
    if not people:
        return []
    outside = ((xy < 0) | (xy >= size)).any(axis=1)
    points = np.concatenate([xy, np.where(outside, np.float32(0), confidence)[:, None]],
                            axis=1)  # (P, 3)
    faces = (len(points) - 18 * len(people)) // 70
    if flip:
        points = points[_flip_order(len(people), faces)]
    bodies, face_points = points[:18 * len(people)], iter(points[18 * len(people):]
                                                           .reshape(faces, 70, 3))
    return [Person(body=body, face=None if p.face is None else next(face_points))
            for p, body in zip(people, bodies.reshape(-1, 18, 3))]


@dataclass
class ResizeCrop:
    """Shorter side to ``resolution``, square crop (centre or random), optional flip.

    Args:
        resolution: output side R.
        random_crop: crop at a random offset instead of the centre.
        flip_prob: probability of a horizontal flip.
        min_face: faces whose box, clipped to the crop, is narrower or shorter than this
            (pixels) are dropped with their landmarks, crop and person link.
    """

    resolution: int
    random_crop: bool = False
    flip_prob: float = 0.0
    min_face: float = 2.0

    def _origin(self, hw: tuple[int, int], rng: torch.Generator) -> tuple[int, int]:
        h, w = hw
        if self.random_crop:
            top = int(torch.randint(h - self.resolution + 1, (), generator=rng))
            left = int(torch.randint(w - self.resolution + 1, (), generator=rng))
            return top, left
        return round((h - self.resolution) / 2), round((w - self.resolution) / 2)

    def _draw_flip(self, rng: torch.Generator) -> bool:
        """Whether to flip: a float32 uniform draw below ``flip_prob`` (compared in float32,
        as ``torch.rand(()) < p`` compares; read out with ``item``, one torch call per
        sample instead of three, each costing tens of microseconds in the loader's stream)."""
        return bool(torch.rand((), generator=rng).item() < np.float32(self.flip_prob))

    def resized_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) with the shorter side at R, as ``F.resize(x, [R])`` computes it."""
        h, w = hw
        short, long = min(h, w), max(h, w)
        new_long = int(self.resolution * long / short)
        return (self.resolution, new_long) if h <= w else (new_long, self.resolution)

    def __call__(self, sample: Sample, rng: torch.Generator) -> Sample:
        """``sample`` at R x R; ``rng`` decides the crop offset and the flip.

        Geometry is torchvision's keypoint geometry (module doc); the pixels go through
        OpenCV's area / bilinear resize and slicing, which is several times faster per
        image on one core than torchvision and samples the same grid (align_corners=False).
        The crop stays a view of the decoded image (not C-contiguous), a flipped one a
        mirrored view (negative column stride): the view's collate copies it into the batch
        (``stack_images``, OpenCV's flip for a mirrored one), one pass instead of two.
        """
        size, hw = self.resolution, self.resized_hw(sample.hw)
        xy, confidence = _points(sample)
        top, left = self._origin(hw, rng)
        flip = self.flip_prob > 0 and self._draw_flip(rng)
        scale = np.float32([hw[1] / sample.hw[1], hw[0] / sample.hw[0]])  # as resize_keypoints
        _move(xy, scale, np.float32([left, top]), size if flip else 0)
        masks = None if sample.masks is None else self._masks(sample.masks, hw, top, left, flip)
        image = _resize_image(sample.image, hw)[top:top + size, left:left + size]
        image = image[:, ::-1] if flip else image  # a view: collate copies (and mirrors) it once
        return self._rebuild(sample, image, xy, confidence, flip, masks)

    def _masks(self, masks: np.ndarray, hw: tuple[int, int], top: int, left: int,
               flip: bool) -> np.ndarray:
        """(F, R, R) per-face masks moved like the image (nearest-neighbour resize)."""
        mask = F.crop(F.resize(tv_tensors.Mask(torch.from_numpy(masks)), list(hw)),
                      top, left, self.resolution, self.resolution)
        return (F.horizontal_flip(mask) if flip else mask).numpy()

    def _rebuild(self, sample: Sample, image: np.ndarray, points: np.ndarray,
                 confidence: np.ndarray, flip: bool, masks: np.ndarray | None) -> Sample:
        """The transformed sample; faces cropped away are dropped, the others keep their
        whole (unclamped) boxes."""
        faces = sample.num_faces
        boxes = _boxes(points[:2 * faces], flip)
        visible = np.clip(boxes, 0, self.resolution)  # (F, 4) the part inside the crop
        landmarks = points[2 * faces:7 * faces].reshape(-1, 5, 2)
        crops = sample.crops
        if flip:
            landmarks, crops = landmarks[:, LANDMARK_FLIP], _mirror(crops)
        keep = ((visible[:, 2:] - visible[:, :2]) >= self.min_face).all(axis=1)
        scores, face_person = sample.scores, sample.face_person
        if not keep.all():
            boxes, landmarks, scores, crops, face_person = (
                a[keep] for a in (boxes, landmarks, scores, crops, face_person))
        return replace(sample, image=image, boxes=boxes, landmarks=landmarks, scores=scores,
                       crops=crops, face_person=face_person,
                       masks=None if masks is None else np.ascontiguousarray(masks[keep]),
                       reference=sample.reference if keep[:1].all() else None,  # face 0's
                       people=_people(sample.people, points[7 * faces:], confidence,
                                      self.resolution, flip),
                       original=sample, original_faces=np.flatnonzero(keep))
