"""Preview images of prepared samples: face masks tinted, character outlines, boxes, pose
skeletons, slot ids."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datamodules import storage
from datamodules.schema import MASK_BOX, MASK_CHAR, MASK_SEG, Sample
from ldm_ext.perception.pose import render_control_image, slot_color


def draw_preview(sample: Sample) -> np.ndarray:
    """(H, W, 3) uint8: the image with segmentation masks tinted, character masks and box
    +25 % outlined thin, detector boxes thick (colour of the face index), and the OpenPose
    rendering on top."""
    out = sample.image.astype(np.float32)
    for f in range(sample.num_faces):
        colour = np.array(slot_color(f), np.float32)
        if sample.masks is not None:
            seg = (sample.masks[f] & MASK_SEG) > 0
            out[seg] = 0.6 * out[seg] + 0.4 * colour
    out = out.astype(np.uint8)
    pose = render_control_image(sample.people, sample.hw, [None] * len(sample.people))
    out = np.where(pose.any(axis=2, keepdims=True), pose, out).astype(np.uint8)
    for f, box in enumerate(sample.boxes):
        colour = slot_color(f)
        if sample.masks is not None:
            character = ((sample.masks[f] & MASK_CHAR) > 0).astype(np.uint8)
            contours, _ = cv2.findContours(character, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, 1)
            ys, xs = np.nonzero(sample.masks[f] & MASK_BOX)
            if len(xs):
                cv2.rectangle(out, (int(xs.min()), int(ys.min())), (int(xs.max()), int(ys.max())),
                              colour, 1)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, 2)
    return out


def write_preview(sample: Sample, folder: str | Path) -> str:
    """Write ``draw_preview(sample)`` as ``folder/<key>.jpg`` (a folder or URL); return its
    path. A key that would name a file elsewhere (``prepare`` refuses such keys first) is an
    error."""
    if sample.key in ("", ".", "..") or Path(sample.key).name != sample.key:
        raise ValueError(f"sample key {sample.key!r} names a preview outside {folder}")
    path = storage.join(folder, f"{sample.key}.jpg")
    _, jpg = cv2.imencode(".jpg", cv2.cvtColor(draw_preview(sample), cv2.COLOR_RGB2BGR))
    storage.write_bytes(path, jpg.tobytes())
    return path
