"""People as OpenPose keypoints: the layout every pose module reads and writes.

Body keypoints use the COCO-18 order of OpenPose and controlnet_aux (``BODY_PARTS``),
face keypoints OpenPose's 70 (iBUG 68 + two pupils). "Right" is the subject's right,
i.e. the image left for a frontal person. Coordinates are pixels; confidence 0 = missing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BODY_PARTS = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow",
              "l_wrist", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
              "r_eye", "l_eye", "r_ear", "l_ear")
NUM_FACE_POINTS = 70


@dataclass
class Person:
    """One person: body (18, 3) and optional face (70, 3) keypoints as (x, y, confidence)."""

    body: np.ndarray
    face: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.body = np.asarray(self.body, dtype=np.float32).reshape(len(BODY_PARTS), 3)
        if self.face is not None:
            self.face = np.asarray(self.face, dtype=np.float32).reshape(NUM_FACE_POINTS, 3)


def fit_people(people: list[Person], source_hw: tuple[int, int],
               target_hw: tuple[int, int]) -> list[Person]:
    """People drawn on a (H, W) ``source_hw`` canvas moved onto ``target_hw``: scaled by
    one factor (the largest that fits) and centred, so a pose keeps its proportions on an
    image of another size or shape instead of being squashed."""
    scale = min(target_hw[0] / source_hw[0], target_hw[1] / source_hw[1])
    offset = np.array([target_hw[1] - source_hw[1] * scale,
                       target_hw[0] - source_hw[0] * scale], np.float32) / 2  # (x, y)

    def move(points: np.ndarray | None) -> np.ndarray | None:
        if points is None:
            return None
        moved = points.copy()
        moved[:, :2] = points[:, :2] * scale + offset
        return moved

    return [Person(body=move(p.body), face=move(p.face)) for p in people]
