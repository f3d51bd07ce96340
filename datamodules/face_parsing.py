"""Face parsing masks for ``datamodules.prepare``: a SegFormer face parser through
transformers' ``from_pretrained`` (default ``jonathandinu/face-parsing``, trained on
CelebAMask-HQ's 19 labels), with the ellipse fallback of ``annotate`` when its weights are
not available offline.

Each face is parsed on its own crop (the detector box enlarged by ``context``, the face
centred as the parser saw faces in training); the pixels whose label is a face part
(``FACE_PARTS``: skin, brows, eyes, glasses, ears, nose, mouth, lips; not hair, neck or
clothes) form the face's mask, which stays inside its crop.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_FACE_PARSER = "jonathandinu/face-parsing"
FACE_PARTS = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
              "nose", "mouth", "u_lip", "l_lip")


class FaceParserMissing(RuntimeError):
    """The face parser's weights are not available; the message says how to provide them."""


def _crop_boxes(boxes: np.ndarray, context: float, hw: tuple[int, int]) -> np.ndarray:
    """(F, 4) int xyxy: square crops around each box, side = longer box side x (1 + context),
    clipped to the image."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) * (1 + context) / 2
    lo = np.floor(np.clip(centre - half, 0, None))
    hi = np.ceil(np.minimum(centre + half, [hw[1], hw[0]]))
    return np.concatenate([lo, np.maximum(hi, lo + 1)], axis=1).astype(np.int64)


class FaceParsingSegmenter:
    """``Segmenter`` (``datamodules.annotate``) from a SegFormer face parser.

    Args:
        name_or_path: hub id or local folder of a ``SegformerForSemanticSegmentation``
            whose ``config.id2label`` names CelebAMask-HQ's parts, and its image processor.
        device: torch device.
        local_files_only: never contact the hub.
        context: crop margin around the detector box (fraction of its longer side).
    """

    def __init__(self, name_or_path: str = DEFAULT_FACE_PARSER, device: str = "cpu",
                 local_files_only: bool = False, context: float = 0.5) -> None:
        from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

        try:
            self.model = SegformerForSemanticSegmentation.from_pretrained(
                name_or_path, local_files_only=local_files_only).to(device).eval()
            self.processor = SegformerImageProcessor.from_pretrained(
                name_or_path, local_files_only=local_files_only)
        except OSError as error:
            raise FaceParserMissing(
                f"face parser '{name_or_path}' not found: download the hub repo "
                f"{DEFAULT_FACE_PARSER} into the Hugging Face cache or pass its local folder "
                f"(prepare falls back to ellipse masks). ({error})") from error
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        self.part_ids = torch.tensor([labels[p] for p in FACE_PARTS if p in labels])
        if not len(self.part_ids):
            raise ValueError(f"'{name_or_path}' labels {sorted(labels)} name no face part "
                             f"of {FACE_PARTS}")
        self.name, self.device, self.context = f"face-parsing({name_or_path})", device, context

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(F, H, W) bool face-part masks of the faces in ``boxes`` (xyxy pixels)."""
        masks = np.zeros((len(boxes), *image.shape[:2]), bool)
        if not len(boxes):
            return masks
        crops = _crop_boxes(np.asarray(boxes, np.float32), self.context, image.shape[:2])
        pixels = self.processor([image[y0:y1, x0:x1] for x0, y0, x1, y1 in crops],
                                return_tensors="pt")["pixel_values"].to(self.device)
        logits = self.model(pixel_values=pixels).logits  # (F, labels, h, w)
        for mask, logit, (x0, y0, x1, y1) in zip(masks, logits, crops):
            up = F.interpolate(logit[None].float(), size=(int(y1 - y0), int(x1 - x0)),
                               mode="bilinear", align_corners=False)[0]  # (labels, ch, cw)
            parts = torch.isin(up.argmax(0).cpu(), self.part_ids)
            mask[y0:y1, x0:x1] = parts.numpy()
        return masks
