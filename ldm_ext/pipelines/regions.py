"""Region-wise composition of per-subject denoising (MultiDiffusion, Bar-Tal et al. 2023),
as PortraitBooth generates several subjects (Sec. 5.3).

Every step, one shared latent gets a noise prediction per subject (conditioned on that
subject alone) and one for the shared prompt; they are blended pixel-wise by region
weights: each subject's prediction inside its region, the shared prompt's outside, regions
that overlap averaged. MultiDiffusion averages the per-region *denoised latents*; for a
sampler whose step is linear in the noise prediction (DDIM, Euler without churn) blending
the predictions before the step gives exactly that average, in one scheduler step.

Regions are normalised xyxy boxes: from a layout file (``{"regions": [[x0, y0, x1, y1],
...]}``) or from the people of a pose template (their keypoints' box plus a margin).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ldm_ext.cli import InputError
from ldm_ext.perception.pose import Person


def boxes_from_people(people: list[Person], hw: tuple[int, int],
                      margin: float = 0.1) -> np.ndarray:
    """(K, 4) normalised xyxy regions: each person's body and face keypoints' bounding box
    grown by ``margin`` x the image side on every side, clipped to the image."""
    height, width = hw
    boxes = []
    for k, person in enumerate(people):
        points = [p[p[:, 2] > 0, :2] for p in (person.body, person.face) if p is not None]
        points = np.concatenate(points) if points else np.zeros((0, 2))
        if len(points) < 2:
            raise InputError(f"person {k} of the pose has fewer than 2 keypoints")
        grow = margin * np.array([width, height])
        lo, hi = points.min(0) - grow, points.max(0) + grow
        boxes.append(np.concatenate([lo, hi]) / [width, height, width, height])
    return np.clip(np.asarray(boxes, dtype=np.float32), 0.0, 1.0)


def load_layout(path: str | Path) -> np.ndarray:
    """(K, 4) normalised xyxy regions of a layout JSON ``{"regions": [[x0, y0, x1, y1], ...]}``
    (fractions of the width / height); a missing file, bad JSON or an empty or inverted box
    is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"layout {path}: no such file")
    try:
        boxes = np.asarray(json.loads(path.read_text())["regions"], dtype=np.float32)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f'layout {path}: expected {{"regions": [[x0, y0, x1, y1], ...]}} '
                         f"in [0, 1] ({type(err).__name__}: {err})") from None
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes):
        raise InputError(f"layout {path}: regions must be a non-empty list of 4 numbers each")
    if (boxes < 0).any() or (boxes > 1).any() or (boxes[:, 2:] <= boxes[:, :2]).any():
        raise InputError(f"layout {path}: each region needs 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
    return boxes


def region_masks(boxes: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) float {0, 1}: latent pixels whose centre lies in each normalised box; a
    box smaller than one pixel still gets the pixel holding its centre."""
    h, w = latent_hw
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h  # (h,)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w  # (w,)
    boxes = boxes.float().cpu()
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])  # (K, h)
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])  # (K, w)
    masks = (inside_y[:, :, None] & inside_x[:, None, :]).float()  # (K, h, w)
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2 * torch.tensor([w, h])).long()
    for k in range(len(boxes)):
        if masks[k].sum() == 0:
            masks[k, centre[k, 1].clamp(0, h - 1), centre[k, 0].clamp(0, w - 1)] = 1.0
    return masks


def blend_weights(masks: torch.Tensor) -> torch.Tensor:
    """(K + 1, 1, h, w) weights summing to 1 per pixel: the shared prompt (row 0) where no
    region is, each subject k (row k + 1) in its region, equal shares where regions overlap."""
    background = 1.0 - masks.amax(0, keepdim=True)  # (1, h, w)
    raw = torch.cat([background, masks])  # (K + 1, h, w)
    return (raw / raw.sum(0, keepdim=True)).unsqueeze(1)


def compose(predictions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Blend (K + 1, C, h, w) predictions (shared prompt first) -> (1, C, h, w)."""
    return (predictions * weights.to(predictions.dtype)).sum(0, keepdim=True)
