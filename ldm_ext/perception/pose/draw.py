"""OpenPose skeleton drawing, pixel for pixel as controlnet_aux draws it, in a fraction of
its time.

ControlNet's OpenPose models were trained on images drawn by lllyasviel's ``util.py``
(``draw_bodypose`` / ``draw_facepose`` in controlnet_aux): each limb a filled 1-degree
polygon ellipse of half-width 4 in 60 % of its colour, each body keypoint a filled circle of
radius 4, each face keypoint a white circle of radius 3. We keep every rounding of that
code (float32 normalised coordinates, truncation to int, float32 limb length), so the
images are identical (``tests/test_pose.py`` checks it on random people), but compute the
geometry of all limbs and points of all people at once instead of building small arrays per
limb or person: the data loader draws one control image per training sample.
"""
from __future__ import annotations

import math
from itertools import islice

import cv2
import numpy as np

# Limbs as (keypoint, keypoint) in the COCO-18 order of ``keypoints.BODY_PARTS``.
LIMBS = np.array([(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
                  (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)])
# OpenPose's palette: keypoint k and limb k share colour k (a hue wheel in 18 steps).
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
          (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
          (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
          (255, 0, 255), (255, 0, 170), (255, 0, 85)]
LIMB_COLORS = [tuple(int(c * 0.6) for c in color) for color in COLORS[:len(LIMBS)]]
STICK_WIDTH, BODY_RADIUS, FACE_RADIUS = 4, 4, 3


def _disk_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) pixel offsets of OpenCV's filled circle of ``radius`` about its centre."""
    side = 2 * radius + 3
    tile = np.zeros((side, side), np.uint8)
    cv2.circle(tile, (radius + 1, radius + 1), radius, 255, thickness=-1)
    dy, dx = np.nonzero(tile)
    return dx - radius - 1, dy - radius - 1


FACE_DOT = _disk_offsets(FACE_RADIUS)  # all face dots are white: stamped in one assignment
# A whole RGB pixel as one numpy item, so a stamp writes each pixel once, not per channel.
RGB_PIXEL = np.dtype("V3")
WHITE_PIXEL = np.frombuffer(b"\xff\xff\xff", RGB_PIXEL)[0]


def _canvas_xy(points: np.ndarray, hw: tuple[int, int],
               canvas_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(K,) float32 x and y as controlnet_aux computes them: pixel / frame side * canvas
    side, for points given in a frame of ``hw`` (height, width)."""
    (height, width), (canvas_h, canvas_w) = hw, canvas_hw
    xs = points[:, 0].astype(np.float32) / np.float32(width) * np.float32(canvas_w)
    ys = points[:, 1].astype(np.float32) / np.float32(height) * np.float32(canvas_h)
    return xs, ys


def draw_people(canvas: np.ndarray, people: list, hw: tuple[int, int]) -> None:
    """Skeletons of ``people`` (``Person``s given in a frame of ``hw``, height and width) in
    place on the (H, W, 3) uint8 ``canvas``, in controlnet_aux's order: person after person,
    its limbs, then its body keypoints, then its face dots.

    The geometry of all people (canvas coordinates, which limbs and points are drawn) is
    computed in one numpy pass over every point, not per person: the data loader draws
    every training sample's people, and each small numpy call costs microseconds there.
    """
    if not people:
        return
    faces = [p.face for p in people if p.face is not None]
    points = np.concatenate([p.body for p in people] + faces)  # (18 P + 70 F, 3)
    xs, ys = _canvas_xy(points, hw, canvas.shape[:2])
    bodies = 18 * len(people)
    present = points[:bodies, 2] > 0
    limbs = _limbs(xs, ys, present.reshape(-1, 18))
    keypoint = np.flatnonzero(present)  # person by person, COCO order
    circles = zip((keypoint % 18).tolist(), xs[keypoint].astype(np.int64).tolist(),
                  ys[keypoint].astype(np.int64).tolist())  # truncated, as controlnet_aux does
    circle_counts = present.reshape(-1, 18).sum(axis=1).tolist()
    dots = iter(_face_dots(xs[bodies:], ys[bodies:], points[bodies:, 2], canvas.shape[:2]))
    pixels = canvas.view(RGB_PIXEL).reshape(-1)  # (H * W,) one 3-byte item per pixel
    for person, person_limbs, count in zip(people, limbs, circle_counts):
        for limb, cx, cy, ddx, ddy in person_limbs:
            length = (ddx ** 2 + ddy ** 2) ** 0.5  # float32 scalars, as controlnet_aux rounds
            angle = math.degrees(math.atan2(float(ddy), float(ddx)))
            polygon = cv2.ellipse2Poly((cx, cy), (int(length / 2), STICK_WIDTH), int(angle),
                                       0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, LIMB_COLORS[limb])
        for k, x, y in islice(circles, count):
            cv2.circle(canvas, (x, y), BODY_RADIUS, COLORS[k], thickness=-1)
        if person.face is not None:
            pixels[next(dots)] = WHITE_PIXEL


def _limbs(xs: np.ndarray, ys: np.ndarray, present: np.ndarray) -> list[list[tuple]]:
    """Per person, its drawn limbs (both ends present) as (limb, centre x, centre y, dx, dy):
    the centre truncated to int and the float32 offset between the ends, as controlnet_aux
    computes them (``xs``, ``ys``: canvas coordinates of the (P, 18) bodies first)."""
    person, limb = np.nonzero(present[:, LIMBS].all(axis=2))  # person-major, limb order
    first, second = LIMBS[limb, 0] + 18 * person, LIMBS[limb, 1] + 18 * person
    mid_x, mid_y = (xs[first] + xs[second]) / 2, (ys[first] + ys[second]) / 2
    drawn = list(zip(limb.tolist(), mid_x.astype(np.int64).tolist(),
                     mid_y.astype(np.int64).tolist(), xs[first] - xs[second],
                     ys[first] - ys[second]))
    ends = np.cumsum(np.bincount(person, minlength=len(present))).tolist()
    return [drawn[start:end] for start, end in zip([0] + ends, ends)]


def _face_dots(xs: np.ndarray, ys: np.ndarray, confidence: np.ndarray,
               canvas_hw: tuple[int, int]) -> list[np.ndarray]:
    """Per (70-point) face, the flat canvas indices of its white dots (OpenCV's filled
    circle of radius 3) at its present points, inside the canvas; like controlnet_aux,
    points on the canvas's first row or column are not drawn."""
    height, width = canvas_hw
    xs, ys = xs.astype(np.int64), ys.astype(np.int64)  # truncated
    keep = (confidence > 0) & (xs > 0) & (ys > 0)
    xs, ys = xs[:, None] + FACE_DOT[0], ys[:, None] + FACE_DOT[1]  # (70 F, dot pixels)
    inside = keep[:, None] & (xs >= 0) & (ys >= 0) & (xs < width) & (ys < height)
    ends = np.cumsum(inside.reshape(-1, 70 * len(FACE_DOT[0])).sum(axis=1)).tolist()
    flat = (ys * width + xs)[inside]
    return [flat[start:end] for start, end in zip([0] + ends, ends)]
