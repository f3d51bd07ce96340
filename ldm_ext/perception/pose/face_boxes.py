"""Face boxes from pose keypoints: InstantFamily's face regions at inference.

Face regions are the face box enlarged by 25 % (InstantFamily Sec. 3.5). Training takes
that box from the face detector, inference from the pose; ``detector_box`` maps the
keypoints' box to the box the detector gives, so inference regions have training's size
and place.
"""
from __future__ import annotations

import numpy as np

from .keypoints import Person

# Head keypoints and how far (x their offset from the nose) the face extends around it.
HEAD_REACH = {0: 0.0, 14: 2.2, 15: 2.2, 16: 1.1, 17: 1.1}


def _present(points: np.ndarray | None) -> np.ndarray:
    """(K, 2) coordinates of the keypoints with confidence > 0."""
    if points is None:
        return np.zeros((0, 2), np.float32)
    return points[points[:, 2] > 0, :2]


def _head_extent(body: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Square head box (lo, hi) from nose, eyes and ears: centred on the nose (else on the
    mean head point), half side = the largest per-axis offset of an eye x 2.2 or ear x 1.1."""
    present = [k for k in HEAD_REACH if body[k, 2] > 0]
    if len(present) < 2:
        return None
    centre = body[0, :2] if 0 in present else body[present, :2].mean(0)
    half = max(HEAD_REACH[k] * np.abs(body[k, :2] - centre).max() for k in present)
    if half <= 0:
        return None
    return centre - half, centre + half


def _keypoint_extent(person: Person) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(lo, hi, source) of the face keypoints' bounding box (source "face"), else of the
    head body keypoints (``_head_extent``, source "head"); None when neither exists."""
    points = _present(person.face)
    if len(points) >= 2:
        return points.min(0), points.max(0), "face"
    extent = _head_extent(person.body)
    return None if extent is None else (*extent, "head")


def face_box(person: Person, margin: float = 0.25) -> np.ndarray | None:
    """xyxy pixels of the face keypoints' bounding box enlarged by ``margin`` (w, h x 1.25
    about its centre for the default); falls back to head body keypoints (nose, eyes, ears)
    when there are no face keypoints. None when neither gives a box."""
    extent = _keypoint_extent(person)
    if extent is None:
        return None
    lo, hi, _ = extent
    return _grown(lo, hi, margin)


def _grown(lo: np.ndarray, hi: np.ndarray, margin: float) -> np.ndarray:
    """(..., 4) float32 xyxy boxes from (..., 2) corners, grown by ``margin`` about their
    centres."""
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * (1.0 + margin)
    return np.concatenate([centre - half, centre + half], axis=-1).astype(np.float32)


def people_face_boxes(people: list[Person], margin: float = 0.25) -> list[np.ndarray | None]:
    """``face_box`` of each person, the face keypoints of all people at once: the same
    float32 boxes in a few numpy calls instead of a few per person (the data loader asks
    for every selected face of every training sample)."""
    faces = [p.face for p in people if p.face is not None]
    if not faces:
        return [face_box(p, margin) for p in people]
    points = np.stack(faces)  # (F, 70, 3)
    present = (points[:, :, 2] > 0)[:, :, None]
    enough = present.sum(axis=(1, 2)) >= 2  # else: the head keypoints (face_box)
    lo = np.where(present, points[:, :, :2], np.inf)[enough].min(axis=1)  # (F', 2)
    hi = np.where(present, points[:, :, :2], -np.inf)[enough].max(axis=1)
    boxes, enough = iter(_grown(lo, hi, margin)), iter(enough.tolist())
    out = []
    for person in people:
        found = person.face is not None and next(enough)
        out.append(next(boxes) if found else face_box(person, margin))
    return out


# Keypoint box -> face detector box, per keypoint source: (centre shift down, width scale,
# height scale) in units of the keypoint box's height, width, height. Medians over the
# seven faces MTCNN (min_score 0.95) finds in skimage's astronaut and insightface's t1.jpg,
# against the pose ``prepare`` writes without OpenPose weights (``people_from_faces`` on
# the same detections, as ``pose_template`` builds its people): its face keypoints
# ("face") and its head keypoints ("head", used when a person has no face keypoints).
# The face keypoint box had 0.76x the detector box's area (0.64-0.89 per face) and sat
# lower (the detector box takes in the forehead); mapped, 1.08x (astronaut) and 0.97x
# (t1) on average. OpenPose-style 68-point faces (dlib's 68-point predictor standing in)
# had 0.80x; mapped, 1.02x over the seven faces. No horizontal shift: training flips
# images, and the measured shifts straddle 0 (-0.03 to 0.19 box widths).
TO_DETECTOR = {"face": (-0.16, 0.95, 1.35), "head": (-0.10, 0.66, 0.84)}


def detector_box(person: Person) -> np.ndarray | None:
    """xyxy pixels of the box a face detector would give for ``person``'s face: the
    keypoint box (face keypoints, else head keypoints) mapped by ``TO_DETECTOR``.
    InstantFamily's masks are detector boxes + 25 % in training (Sec. 3.4), so inference
    face regions start from this box, not from the smaller keypoint box. None without
    face or head keypoints."""
    extent = _keypoint_extent(person)
    if extent is None:
        return None
    lo, hi, source = extent
    shift, width_scale, height_scale = TO_DETECTOR[source]
    size = hi - lo  # (2,) w, h
    centre = (lo + hi) / 2 + np.array([0.0, shift * size[1]])
    half = size / 2 * np.array([width_scale, height_scale])
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


def face_center(person: Person) -> np.ndarray | None:
    """(x, y) centre of the face box (see :func:`face_box`), or None."""
    box = face_box(person, margin=0.0)
    return None if box is None else (box[:2] + box[2:]) / 2
