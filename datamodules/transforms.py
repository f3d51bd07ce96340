"""Resize / crop / flip a ``Sample`` with its boxes, landmarks and pose keypoints aligned.

Geometry goes through torchvision.transforms.v2 functionals on tv_tensors (``Image``,
``BoundingBoxes``, ``KeyPoints``), with parameters drawn from the sample's own generator,
so no global RNG is touched. torchvision flips boxes as edges (``x -> W - x``) and keypoints
as pixel indices (``x -> W - 1 - x``); we keep its conventions (1 px apart at most).

A horizontal flip also swaps left/right identities: landmark eyes and mouth corners, OpenPose
body parts, and the 70 face keypoints (68-point layout + 2 pupils); face crops are mirrored
with the image so each crop still shows its face as drawn.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from datamodules.schema import Sample
from ldm_ext.pose import Person


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


def _points(sample: Sample) -> tv_tensors.KeyPoints:
    """All 2-D points of a sample in one tensor: landmarks, bodies, faces (in that order)."""
    parts = [sample.landmarks.reshape(-1, 2)]
    parts += [p.body[:, :2] for p in sample.people]
    parts += [p.face[:, :2] for p in sample.people if p.face is not None]
    xy = torch.from_numpy(np.concatenate(parts).astype(np.float32))  # (M, 2)
    return tv_tensors.KeyPoints(xy, canvas_size=sample.hw)


def _people(people: list[Person], xy: np.ndarray, size: int, flip: bool) -> list[Person]:
    """People with moved keypoints; points outside the image lose their confidence."""
    def moved(points: np.ndarray, new_xy: np.ndarray, order: np.ndarray) -> np.ndarray:
        out = np.concatenate([new_xy, points[:, 2:]], axis=1)
        out[((new_xy < 0) | (new_xy >= size)).any(axis=1), 2] = 0.0
        return out[order] if flip else out

    bodies, xy = np.split(xy, [18 * len(people)])
    faces = iter(np.split(xy, np.arange(70, len(xy), 70)))
    return [Person(body=moved(p.body, body, BODY_FLIP),
                   face=None if p.face is None else moved(p.face, next(faces), FACE_FLIP))
            for p, body in zip(people, bodies.reshape(-1, 18, 2))]


@dataclass
class ResizeCrop:
    """Shorter side to ``resolution``, square crop (centre or random), optional flip.

    Args:
        resolution: output side R.
        random_crop: crop at a random offset instead of the centre.
        flip_prob: probability of a horizontal flip.
        min_face: faces whose box is narrower or shorter than this (pixels, after the crop)
            are dropped with their landmarks, crop and person link.
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

    def __call__(self, sample: Sample, rng: torch.Generator) -> Sample:
        """``sample`` at R x R; ``rng`` decides the crop offset and the flip."""
        size = self.resolution
        items = [tv_tensors.Image(torch.from_numpy(sample.image).permute(2, 0, 1)),
                 tv_tensors.BoundingBoxes(torch.from_numpy(sample.boxes), format="XYXY",
                                          canvas_size=sample.hw),
                 _points(sample)]
        items = [F.resize(t, [size], antialias=True) for t in items]
        top, left = self._origin(items[0].shape[-2:], rng)
        items = [F.crop(t, top, left, size, size) for t in items]
        flip = self.flip_prob > 0 and bool(torch.rand((), generator=rng) < self.flip_prob)
        if flip:
            items = [F.horizontal_flip(t) for t in items]
        image, boxes, points = (t.numpy() for t in items)
        return self._rebuild(sample, image.transpose(1, 2, 0), boxes, points, flip)

    def _rebuild(self, sample: Sample, image: np.ndarray, boxes: np.ndarray,
                 points: np.ndarray, flip: bool) -> Sample:
        """The transformed sample; faces cropped away are dropped."""
        landmarks, body_face = np.split(points, [5 * sample.num_faces])
        landmarks, crops = landmarks.reshape(-1, 5, 2), sample.crops
        if flip:
            landmarks, crops = landmarks[:, LANDMARK_FLIP], crops[..., ::-1]
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= self.min_face).all(axis=1)
        return replace(sample, image=np.ascontiguousarray(image), boxes=boxes[keep],
                       landmarks=landmarks[keep], scores=sample.scores[keep],
                       crops=np.ascontiguousarray(crops[keep]),
                       face_person=sample.face_person[keep],
                       people=_people(sample.people, body_face, self.resolution, flip))
