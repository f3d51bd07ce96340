"""Face segmentation: what a segmenter is, and the geometric one used when no face parser's
weights are local (``parsing.FaceParsingSegmenter`` is the real one)."""
from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np


class Segmenter(Protocol):
    """Face segmentation: ``(image (H, W, 3), boxes (F, 4)) -> (F, H, W) bool``."""

    name: str

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray: ...


class EllipseSegmenter:
    """Fallback face segmentation: the ellipse inscribed in each detector box."""

    name = "ellipse"

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        masks = np.zeros((len(boxes), *image.shape[:2]), np.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes):
            centre = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
            axes = (max(1, int(round((x1 - x0) / 2))), max(1, int(round((y1 - y0) / 2))))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
        return masks.astype(bool)
