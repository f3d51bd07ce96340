"""StoryMaker's character reference crop, one function for training and generation.

The official trainer (``mp_dataset.py``, ``crop_refimg``) makes each character's reference
image so: the character mask dilated 7 x 7 and blurred 5 x 5 (Gaussian), the bounding box
of what remains, the person blended onto white through that soft mask, a random rotation on
white (PIL's ``rotate``, nearest neighbour, same size), then a squash to 224² with LANCZOS.
The released weights saw these crops, so training views and the generation pipeline both
call :func:`reference_crop`. The official inference pipeline (``crop_image``) blurs without
dilating and resizes bicubic: we feed generation the trainer's crop instead, the one the
weights learned from (a 3 px wider soft edge, a sharper resize).
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

WHITE = 255
DILATE, BLUR = 7, 5  # the official trainer's kernel sides
MARGIN = 8  # > DILATE // 2 + BLUR: the soft mask and its blur's border reads fit inside


def soft_mask(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The official trainer's soft character mask, cut to its bounding box.

    mask (H, W) bool -> ((h, w) uint8 in [0, 255], (top, left) of the box in the image);
    None when the mask is empty. The dilation and blur run on a window of the mask's box
    plus ``MARGIN``, which gives the whole-image result at a fraction of the cost."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    y0, x0 = max(rows[0] - MARGIN, 0), max(cols[0] - MARGIN, 0)
    y1, x1 = rows[-1] + 1 + MARGIN, cols[-1] + 1 + MARGIN
    window = mask[y0:y1, x0:x1].astype(np.uint8) * WHITE
    window = cv2.dilate(window, np.ones((DILATE, DILATE), np.uint8), iterations=1)
    window = cv2.GaussianBlur(window, (BLUR, BLUR), 0)
    ys, xs = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
    box = window[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
    return box, (y0 + ys[0], x0 + xs[0])


def character_on_white(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """(h, w, 3) uint8: the character of ``mask`` (bool (H, W)) blended onto white through
    its soft mask, cut to the soft mask's box (None when the mask is empty)."""
    found = soft_mask(mask)
    if found is None:
        return None
    alpha, (top, left) = found
    h, w = alpha.shape
    alpha = alpha[..., None] / WHITE  # (h, w, 1) float64, as the official blend
    person = image[top:top + h, left:left + w]
    return (WHITE * (1 - alpha) + alpha * person).astype(np.uint8)


def reference_crop(image: np.ndarray, mask: np.ndarray, size: int = 224,
                   degrees: float = 0.0) -> np.ndarray:
    """(size, size, 3) uint8: the character reference of ``mask`` in ``image`` (H, W, 3),
    rotated counter-clockwise by ``degrees`` on white (training's augmentation; 0: none),
    then squashed to the square with LANCZOS (aspect not kept, as officially). An empty
    mask gives white."""
    character = character_on_white(image, mask)
    if character is None:
        return np.full((size, size, 3), WHITE, np.uint8)
    crop = Image.fromarray(character)
    if degrees:
        crop = crop.rotate(degrees, resample=Image.NEAREST, fillcolor=(WHITE,) * 3)
    return np.asarray(crop.resize((size, size), resample=Image.LANCZOS))
