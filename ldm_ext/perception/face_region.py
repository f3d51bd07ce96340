"""A face's region: its detector box enlarged by 25 % (InstantFamily Sec. 3.5), the frame
of the face masks, the characters' face ellipses and the linking of faces to people."""
from __future__ import annotations

import numpy as np

FACE_MARGIN = 0.25  # face region = detector box enlarged by 25 % (InstantFamily Sec. 3.5)


def enlarged(boxes: np.ndarray, margin: float, hw: tuple[int, int]) -> np.ndarray:
    """(F, 4) boxes with width and height x (1 + margin) about their centres, clipped."""
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
    out = np.concatenate([centre - half * (1 + margin), centre + half * (1 + margin)], axis=1)
    return np.clip(out, 0, [hw[1], hw[0], hw[1], hw[0]]).astype(np.float32)
