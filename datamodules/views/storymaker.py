"""StoryMaker's per-sample inputs (docs/methods.md §3): characters with their face, their crop on
white and their segmentation mask, and the pose of everyone."""
from __future__ import annotations

import numpy as np
import torch

from datamodules.schema import MASK_CHAR, Sample
from datamodules.views.common import (BINARY, SIGNED, UNIT, ControlDrawing, draw_controls,
                                      floats, normalized_boxes, pad_slots,
                                      stack_images, valid_slots)
from ldm_ext.face.align import arcface_crops
from ldm_ext.perception.character_crop import reference_crop
from ldm_ext.perception.character_masks import HullCharacters

# Face crops are aligned on ArcFace's five-point template at twice its 112 px (as the
# official CLIP face input, ``norm_crop(..., 224)``); the ArcFace encoders halve them to 112.
FACE_SIZE = 224


def draw_angles(count: int, max_degrees: float, rng: torch.Generator) -> list[float]:
    """``count`` angles uniform in [-max_degrees, max_degrees] from ``rng`` (none drawn when
    ``max_degrees`` is 0, so that streams without rotation keep their randomness)."""
    if not max_degrees:
        return [0.0] * count
    return ((torch.rand(count, generator=rng, dtype=torch.float64) * 2 - 1)
            * max_degrees).tolist()


def source_of(sample: Sample, faces: list[int]) -> tuple[Sample, list[int]]:
    """The decoded photo behind ``sample`` (before the training transform) and the indices
    of ``faces`` in it; ``sample`` itself when it was not transformed."""
    if sample.original is None:
        return sample, faces
    return sample.original, [int(sample.original_faces[f]) for f in faces]


class StoryMakerView:
    """StoryMaker inputs: up to N characters (the N largest faces, in random order so that
    every character position ``E_pos`` learns; Sec. 4.3).

    Per batch (``collate``)::

        pixel_values     (B, 3, R, R) float in [-1, 1]
        control          (B, 3, R, R) float in [0, 1]  OpenPose of all people (no circles)
        caption, key     list[str]
        face_crops       (B, N, 3, 224, 224) float in [-1, 1]: the face aligned on ArcFace's
                         template (ArcFace after halving, and CLIP), 0 when empty
        characters       (B, N, 3, S, S) float in [0, 1]: the character reference, the
                         official trainer's crop (soft mask on white, rotated, squashed to
                         the square; CLIP-image input before its own normalisation), 0
                         when empty
        character_masks  (B, N, R, R) float {0, 1}: M_k of Eq. 10 (background: 1 - union)
        face_boxes       (B, N, 4) float xyxy in [0, 1]
        face_valid       (B, N) bool

    Face and character crops are cut from the decoded photo before the training transform
    (``Sample.original``), as the official trainer cuts its references from the original
    image: faces by their five landmarks as generation cuts them (not the shard's detector
    crops: ArcFace and the released FaceID / StoryMaker weights expect the aligned crop),
    characters by ``reference_crop``, the one crop generation uses too.
    Masks come from the shard's ``MASK_CHAR`` bits (``ldm_ext.perception.character_masks``); shards
    written without them get the pose-hull masks here, from the pose.
    Character dropout (5 %) and caption dropout (10 %) belong to the training step.

    Args:
        num_slots: characters per sample N (the paper trains with one or two).
        float_batches: ``collate`` returns float images (else uint8, see ``normalize``).
        character_size: side S of the character crops (224: CLIP ViT-H/14's input).
        reference_rotation: each character crop is rotated on white by an angle uniform in
            +-this many degrees, drawn from the sample's generator (the official trainer:
            10; 0: off). The aligned face crop is not rotated (nor is it officially).
    """

    optional = ("masks.png",)
    ranges = {"pixel_values": SIGNED, "control": UNIT, "face_crops": SIGNED,
              "characters": UNIT, "character_masks": BINARY}

    def __init__(self, num_slots: int = 2, float_batches: bool = True,
                 character_size: int = 224, reference_rotation: float = 0.0):
        if reference_rotation < 0:
            raise ValueError(f"reference_rotation={reference_rotation} must be >= 0 degrees")
        self.num_slots, self.float_batches = num_slots, float_batches
        self.character_size, self.reference_rotation = character_size, reference_rotation

    def character_masks(self, sample: Sample, faces: list[int]) -> np.ndarray:
        """(n, R, R) bool masks of the characters of ``faces``: the shard's ``MASK_CHAR``
        bits, or the pose hull for a character without any (shards written before the bit)."""
        masks = np.zeros((len(faces), *sample.hw), bool) if sample.masks is None else \
            (sample.masks[faces] & MASK_CHAR) > 0
        empty = ~masks.any(axis=(1, 2))
        if empty.any():
            hulls = HullCharacters()(sample.image, sample.boxes, sample.people,
                                     sample.face_person)
            masks[empty] = hulls[faces][empty]
        return masks

    def __call__(self, sample: Sample, rng: torch.Generator) -> dict:
        largest = min(self.num_slots, sample.num_faces)  # faces are stored largest first
        faces = torch.randperm(largest, generator=rng).tolist()
        masks = self.character_masks(sample, faces)
        angles = draw_angles(len(faces), self.reference_rotation, rng)
        photo, found = source_of(sample, faces)
        return {"pixel_values": sample.image,
                "control": ControlDrawing(sample.people, [], sample.hw),
                "caption": sample.caption, "key": sample.key,
                "face_crops": torch.from_numpy(arcface_crops(
                    photo.image, photo.landmarks[found], FACE_SIZE)).permute(0, 3, 1, 2),
                "characters": self.references(photo, found, angles),
                "character_masks": torch.from_numpy(masks.astype(np.uint8)),
                "face_boxes": normalized_boxes(sample, faces, self.num_slots),
                "face_valid": valid_slots(len(faces), self.num_slots)}

    def references(self, photo: Sample, faces: list[int], angles: list[float]) -> torch.Tensor:
        """(n, 3, S, S) uint8: the characters of ``faces`` cut from the decoded photo as the
        official trainer cuts them (``ldm_ext.perception.character_crop.reference_crop``)."""
        side = self.character_size
        crops = [reference_crop(photo.image, m, side, a)
                 for m, a in zip(self.character_masks(photo, faces), angles)]
        stacked = np.stack(crops) if crops else np.zeros((0, side, side, 3), np.uint8)
        return torch.from_numpy(stacked).permute(0, 3, 1, 2)

    def collate(self, items: list[dict]) -> dict:
        """One batch: images stacked, control images drawn, per-character tensors padded."""
        batch = {"caption": [i["caption"] for i in items], "key": [i["key"] for i in items],
                 "face_boxes": torch.stack([i["face_boxes"] for i in items]),
                 "face_valid": torch.stack([i["face_valid"] for i in items]),
                 "pixel_values": stack_images(items, "pixel_values"),
                 "control": draw_controls(items)}
        for key in ("face_crops", "characters", "character_masks"):
            batch[key] = pad_slots(items, key, self.num_slots)
        return self.normalize(batch) if self.float_batches else batch

    def normalize(self, batch: dict) -> dict:
        """The uint8 tensors of a collated batch as float (on the batch's device)."""
        return floats(batch, self.ranges)
