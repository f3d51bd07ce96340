"""Poses made without a pose model: people from detected faces (``prepare``'s fallback
when no OpenPose weights are local) and side-by-side templates for generation.
"""
from __future__ import annotations

import numpy as np

from ldm_ext.face.align import apply_similarity, fit_similarity

from .keypoints import BODY_PARTS, Person


def _face_template() -> np.ndarray:
    """OpenPose's 70 face points laid out in a unit face box (detector-box-like frame)."""
    def arc(cx, cy, ax, ay, angles):
        angles = np.asarray(angles, dtype=np.float64)
        return np.stack([cx + ax * np.cos(angles), cy - ay * np.sin(angles)], axis=1)

    eye_angles = np.pi - np.arange(6) * np.pi / 3  # outer/inner corner first, upper, lower
    parts = [
        arc(0.5, 0.40, 0.45, 0.60, np.linspace(np.pi, 2 * np.pi, 17)),  # 0-16 jaw, chin at 8
        arc(0.27, 0.30, 0.15, 0.05, np.linspace(np.pi, 0, 5)),  # 17-21 brow (image left)
        arc(0.73, 0.30, 0.15, 0.05, np.linspace(np.pi, 0, 5)),  # 22-26 brow (image right)
        np.stack([np.full(4, 0.5), np.linspace(0.40, 0.60, 4)], axis=1),  # 27-30 bridge, tip
        np.stack([np.linspace(0.42, 0.58, 5), [0.64, 0.65, 0.66, 0.65, 0.64]], axis=1),  # 31-35
        arc(0.30, 0.40, 0.08, 0.035, eye_angles),  # 36-41 eye (image left)
        arc(0.70, 0.40, 0.08, 0.035, eye_angles),  # 42-47 eye (image right)
        arc(0.5, 0.78, 0.16, 0.06, np.pi - np.arange(12) * np.pi / 6),  # 48-59 outer lip
        arc(0.5, 0.78, 0.11, 0.02, np.pi - np.arange(8) * np.pi / 4),  # 60-67 inner lip
        np.array([[0.30, 0.40], [0.70, 0.40]]),  # 68-69 pupils
    ]
    return np.concatenate(parts).astype(np.float32)


FACE_TEMPLATE = _face_template()  # (70, 2)
# Template points matching the detectors' five landmarks: pupils, nose tip, mouth corners.
FACE_TEMPLATE_5 = FACE_TEMPLATE[[68, 69, 30, 48, 54]]
# Head keypoints (index: offset along the eye axis, offset down the face) in eye
# distances from the eyes' midpoint; the neck follows the head's roll.
HEAD_LAYOUT = {1: (0.0, 2.2), 16: (-1.2, 0.3), 17: (1.2, 0.3)}
# Body keypoints (index: image x, image y offsets) in eye distances from the neck: an
# upright, frontal person with arms down.
BODY_LAYOUT = {2: (-3.0, 0.5), 3: (-3.4, 3.4), 4: (-3.5, 6.1), 5: (3.0, 0.5), 6: (3.4, 3.4),
               7: (3.5, 6.1), 8: (-1.7, 6.4), 9: (-1.8, 10.6), 10: (-1.8, 14.8),
               11: (1.7, 6.4), 12: (1.8, 10.6), 13: (1.8, 14.8)}


def _inside(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, 3) keypoints with confidence 1 inside the image, 0 outside."""
    xy = points[:, :2]
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    return np.concatenate([xy, ok[:, None]], axis=1).astype(np.float32)


def _body_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(18, 2) body keypoints from five face landmarks; the eye distance sets the scale."""
    left, right = landmarks[0], landmarks[1]
    eye_distance = max(float(np.linalg.norm(right - left)), 1e-3)
    along = (right - left) / eye_distance  # towards the image right
    down = np.array([-along[1], along[0]])
    body = np.zeros((len(BODY_PARTS), 2), np.float32)
    body[0], body[14], body[15] = landmarks[2], left, right
    for index, (a, b) in HEAD_LAYOUT.items():
        body[index] = (left + right) / 2 + eye_distance * (a * along + b * down)
    for index, offset in BODY_LAYOUT.items():
        body[index] = body[1] + eye_distance * np.asarray(offset)
    return body


def people_from_faces(boxes: np.ndarray, landmarks: np.ndarray,
                      image_hw: tuple[int, int]) -> list[Person]:
    """Fallback pose when no OpenPose model is available.

    Face keypoints: the 70-point template mapped by the similarity that fits its five
    points to the detected landmarks, kept inside the box enlarged by 25 %. Body: ears and
    neck in the face's frame (``HEAD_LAYOUT``), an upright frontal skeleton below the neck
    (``BODY_LAYOUT``), both scaled by the eye distance. Keypoints outside the image get
    confidence 0.

    Args:
        boxes: (F, 4) xyxy face boxes; landmarks: (F, 5, 2) as in ``Faces``;
        image_hw: (height, width).
    """
    height, width = image_hw
    people = []
    for box, points in zip(np.asarray(boxes, np.float32), np.asarray(landmarks, np.float32)):
        matrix = fit_similarity(FACE_TEMPLATE_5, points)
        centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * 1.25
        face = np.clip(apply_similarity(matrix, FACE_TEMPLATE), centre - half, centre + half)
        people.append(Person(body=_inside(_body_from_landmarks(points), height, width),
                             face=_inside(face, height, width)))
    return people


def pose_template(num_people: int, hw: tuple[int, int]) -> list[Person]:
    """``num_people`` frontal people standing side by side in equal columns, eyes at 30 %
    of the height; deterministic. ``hw`` is (height, width)."""
    if num_people < 1:
        raise ValueError("num_people must be >= 1")
    height, width = hw
    column = width / num_people
    eye_distance = min(column / 7.0, height / 10.0)
    side = eye_distance / float(FACE_TEMPLATE_5[1, 0] - FACE_TEMPLATE_5[0, 0])  # face box side
    boxes, landmarks = [], []
    for i in range(num_people):
        origin = np.array([(i + 0.5) * column - side / 2,
                           0.3 * height - FACE_TEMPLATE_5[0, 1] * side])  # box corner
        boxes.append(np.concatenate([origin, origin + side]))
        landmarks.append(origin + FACE_TEMPLATE_5 * side)
    return people_from_faces(np.stack(boxes), np.stack(landmarks), (height, width))
