"""SegFormer semantic parsers run on crops: face and character masks.

Both load through transformers' ``from_pretrained`` and fall back (in ``annotator``) when their
weights are not available offline:

- faces: a face parser (default ``jonathandinu/face-parsing``, CelebAMask-HQ's 19 labels).
  Each face is parsed on a square crop about its detector box enlarged by ``context`` (the
  face centred, as the parser saw faces in training); its face parts (``FACE_PARTS``: skin,
  brows, eyes, glasses, ears, nose, mouth, lips; not hair, neck or clothes) form its mask.
- characters: a human parser (default ``mattmdjaga/segformer_b2_clothes``, ATR's 18 labels:
  hair, face, clothes, limbs, shoes, bag, ...). Each character is parsed on its own region
  (``character_masks``); every label but the background is the character.
"""
from __future__ import annotations

import numpy as np

from ldm_ext.cli import UserError

# torch is imported where it runs, not with the module: ``prepare``'s command line reads
# the default parser names from here before it checks its flags, in a blink

DEFAULT_FACE_PARSER = "jonathandinu/face-parsing"
DEFAULT_HUMAN_PARSER = "mattmdjaga/segformer_b2_clothes"
FACE_PARTS = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
              "nose", "mouth", "u_lip", "l_lip")
BACKGROUND = "background"


class ParserMissing(UserError, RuntimeError):
    """A parser's weights are not available; the message says how to provide them."""


def square_crops(boxes: np.ndarray, context: float, hw: tuple[int, int]) -> np.ndarray:
    """(F, 4) int xyxy: square crops around each box, side = longer box side x (1 + context),
    clipped to the image."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) * (1 + context) / 2
    lo = np.floor(np.clip(centre - half, 0, None))
    hi = np.ceil(np.minimum(centre + half, [hw[1], hw[0]]))
    return np.concatenate([lo, np.maximum(hi, lo + 1)], axis=1).astype(np.int64)


class SegFormerParser:
    """A ``SegformerForSemanticSegmentation`` and its image processor, by hub id or folder.

    Args:
        name_or_path: hub id or local folder.
        default: the hub id to name in the error when the weights are missing.
        device: torch device.
        local_files_only: never contact the hub.
    """

    def __init__(self, name_or_path: str, default: str, device: str = "cpu",
                 local_files_only: bool = False) -> None:
        from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

        try:
            self.model = SegformerForSemanticSegmentation.from_pretrained(
                name_or_path, local_files_only=local_files_only).to(device).eval()
            self.processor = SegformerImageProcessor.from_pretrained(
                name_or_path, local_files_only=local_files_only)
        except OSError as error:
            raise ParserMissing(
                f"parser '{name_or_path}' not found: download the hub repo {default} into the "
                f"Hugging Face cache or pass its local folder (prepare falls back to its "
                f"geometric masks). ({error})") from error
        self.labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        self.device = device

    def masks(self, image: np.ndarray, crops: np.ndarray, keep: list[int]) -> np.ndarray:
        """(F, H, W) bool: inside each xyxy crop of ``crops``, the pixels whose label is in
        ``keep`` (label ids); False outside the crops."""
        import torch
        import torch.nn.functional as F

        masks = np.zeros((len(crops), *image.shape[:2]), bool)
        if not len(crops):
            return masks
        with torch.inference_mode():
            pixels = self.processor([image[y0:y1, x0:x1] for x0, y0, x1, y1 in crops],
                                    return_tensors="pt")["pixel_values"].to(self.device)
            logits = self.model(pixel_values=pixels).logits  # (F, labels, h, w)
            for mask, logit, (x0, y0, x1, y1) in zip(masks, logits, crops):
                up = F.interpolate(logit[None].float(), size=(int(y1 - y0), int(x1 - x0)),
                                   mode="bilinear", align_corners=False)[0]  # (labels, ch, cw)
                mask[y0:y1, x0:x1] = torch.isin(up.argmax(0).cpu(), torch.tensor(keep)).numpy()
        return masks


class FaceParsingSegmenter:
    """``Segmenter`` (``segmenters``) from a SegFormer face parser.

    Args:
        name_or_path: hub id or local folder of a parser whose ``config.id2label`` names
            CelebAMask-HQ's parts.
        device: torch device.
        local_files_only: never contact the hub.
        context: crop margin around the detector box (fraction of its longer side).
    """

    def __init__(self, name_or_path: str = DEFAULT_FACE_PARSER, device: str = "cpu",
                 local_files_only: bool = False, context: float = 0.5) -> None:
        self.parser = SegFormerParser(name_or_path, DEFAULT_FACE_PARSER, device, local_files_only)
        labels = self.parser.labels
        self.part_ids = [labels[p] for p in FACE_PARTS if p in labels]
        if not len(self.part_ids):
            raise ValueError(f"'{name_or_path}' labels {sorted(labels)} name no face part "
                             f"of {FACE_PARTS}")
        self.name, self.context = f"face-parsing({name_or_path})", context

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(F, H, W) bool face-part masks of the faces in ``boxes`` (xyxy pixels)."""
        crops = square_crops(np.asarray(boxes, np.float32).reshape(-1, 4), self.context,
                             image.shape[:2])
        return self.parser.masks(image, crops, self.part_ids)


class HumanParser:
    """Character (person) pixels from a SegFormer human parser: every label but
    ``background``, inside given regions.

    Args:
        name_or_path: hub id or local folder of a parser with a ``background`` label.
        device: torch device.
        local_files_only: never contact the hub.
    """

    def __init__(self, name_or_path: str = DEFAULT_HUMAN_PARSER, device: str = "cpu",
                 local_files_only: bool = False) -> None:
        self.parser = SegFormerParser(name_or_path, DEFAULT_HUMAN_PARSER, device,
                                      local_files_only)
        labels = self.parser.labels
        if BACKGROUND not in labels:
            raise ValueError(f"'{name_or_path}' labels {sorted(labels)} have no "
                             f"'{BACKGROUND}'")
        self.person_ids = [i for n, i in labels.items() if n != BACKGROUND]
        self.name = f"human-parsing({name_or_path})"

    def __call__(self, image: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """(F, H, W) bool person pixels inside each xyxy int region."""
        return self.parser.masks(image, regions, self.person_ids)
