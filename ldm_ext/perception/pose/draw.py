"""OpenPose skeleton drawing, pixel for pixel as controlnet_aux draws it, in a fraction of
its time.

ControlNet's OpenPose models were trained on images drawn by lllyasviel's ``util.py``
(``draw_bodypose`` / ``draw_facepose`` in controlnet_aux): each limb a filled 1-degree
polygon ellipse of half-width 4 in 60 % of its colour, each body keypoint a filled circle of
radius 4, each face keypoint a white circle of radius 3. We keep every rounding of that
code (float32 normalised coordinates, truncation to int, float32 limb length), so the
images are identical (``tests/test_pose.py`` checks it on random people), but compute the
geometry of all limbs at once instead of building small arrays per limb: the data loader
draws one control image per training sample.
"""
from __future__ import annotations

import math

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


def draw_body(canvas: np.ndarray, body: np.ndarray, hw: tuple[int, int]) -> None:
    """Limbs, then keypoints, of one (18, 3) body (x, y, confidence; 0 = missing) given in
    a frame of ``hw`` (height, width), in place on (H, W, 3) uint8 ``canvas``."""
    xs, ys = _canvas_xy(body, hw, canvas.shape[:2])
    present = body[:, 2] > 0
    drawn = present[LIMBS].all(axis=1)  # (17,) both ends present
    first, second = LIMBS[drawn, 0], LIMBS[drawn, 1]
    mid_x, mid_y = (xs[first] + xs[second]) / 2, (ys[first] + ys[second]) / 2
    dx, dy = xs[first] - xs[second], ys[first] - ys[second]
    for limb, cx, cy, ddx, ddy in zip(np.flatnonzero(drawn).tolist(), mid_x.tolist(),
                                      mid_y.tolist(), dx, dy):
        length = (ddx ** 2 + ddy ** 2) ** 0.5  # float32 scalars, as controlnet_aux rounds
        angle = math.degrees(math.atan2(float(ddy), float(ddx)))
        polygon = cv2.ellipse2Poly((int(cx), int(cy)), (int(length / 2), STICK_WIDTH),
                                   int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, LIMB_COLORS[limb])
    for k in np.flatnonzero(present).tolist():  # int(): truncation, as controlnet_aux does
        cv2.circle(canvas, (int(xs[k]), int(ys[k])), BODY_RADIUS, COLORS[k], thickness=-1)


def draw_face(canvas: np.ndarray, face: np.ndarray, hw: tuple[int, int]) -> None:
    """White dots (OpenCV's filled circle of radius 3) at the present points of a (70, 3)
    face given in a frame of ``hw`` (height, width), in place; like controlnet_aux, points
    on the canvas's first row or column are not drawn."""
    xs, ys = (v.astype(np.int64) for v in _canvas_xy(face, hw, canvas.shape[:2]))  # trunc.
    keep = (face[:, 2] > 0) & (xs > 0) & (ys > 0)
    xs, ys = xs[keep, None] + FACE_DOT[0], ys[keep, None] + FACE_DOT[1]  # (P, dot pixels)
    height, width = canvas.shape[:2]
    inside = (xs >= 0) & (ys >= 0) & (xs < width) & (ys < height)
    pixels = canvas.view(RGB_PIXEL).reshape(-1)  # (H * W,) one 3-byte item per pixel
    pixels[(ys * width + xs)[inside]] = WHITE_PIXEL
