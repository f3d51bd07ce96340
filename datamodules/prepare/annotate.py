"""A shard sample from one image: the perception stages' findings in the schema's layout.

The stages themselves (faces, pose, face and character masks, their models and fallbacks)
are ``ldm_ext.perception.annotator.Annotator``'s; here their output becomes a ``Sample``:

- masks: per face, bit flags of the box enlarged by 25 % (``MASK_BOX``, InstantFamily's
  face region, Sec. 3.5), the face segmentation (``MASK_SEG``) and the face's character
  (``MASK_CHAR``, StoryMaker's mask);
- character: the main face's character on white (StoryMaker's reference crop);
- the name of whatever model ran (``face_model``, ``pose_model``, ``models``), so a shard
  says how it was made; images with too few or too many faces are ``Rejected``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.prepare.rejected import Rejected
from datamodules.schema import CROP_SIZE, MASK_BOX, MASK_CHAR, MASK_SEG, Sample
from ldm_ext.face import Faces
from ldm_ext.face.align import tensor_to_uint8
from ldm_ext.perception.annotator import Annotator, Filters
from ldm_ext.perception.character_crop import character_on_white
from ldm_ext.perception.face_region import FACE_MARGIN, enlarged
from ldm_ext.perception.segmenters import Segmenter


def face_masks(image: np.ndarray, boxes: np.ndarray, segmenter: Segmenter,
               characters: np.ndarray) -> np.ndarray:
    """(F, H, W) uint8 bit flags: ``MASK_BOX`` (box + 25 %) | ``MASK_SEG`` (segmenter) |
    ``MASK_CHAR`` (``characters``, (F, H, W) bool)."""
    masks = segmenter(image, boxes).astype(np.uint8) * MASK_SEG
    masks |= characters.astype(np.uint8) * MASK_CHAR
    for mask, (x0, y0, x1, y1) in zip(masks, enlarged(boxes, FACE_MARGIN, image.shape[:2])):
        mask[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] |= MASK_BOX
    return masks


def crops_uint8(faces: Faces) -> np.ndarray:
    """(F, 3, 160, 160) uint8 crops of the schema from the detector's [-1, 1] crops."""
    if not len(faces):
        return np.zeros((0, 3, CROP_SIZE, CROP_SIZE), np.uint8)
    return tensor_to_uint8(faces.crops, CROP_SIZE).transpose(0, 3, 1, 2).copy()


def check_count(filters: Filters, count: int) -> None:
    """``Rejected`` unless ``count`` faces lie within the filters' bounds."""
    if count < filters.min_faces:
        raise Rejected("too_few_faces", f"{count} < {filters.min_faces}")
    if count > filters.max_faces:
        raise Rejected("too_many_faces", f"{count} > {filters.max_faces}")


@dataclass
class SampleAnnotator(Annotator):
    """The perception stages (``Annotator``'s arguments), called on an image to give its
    shard sample."""

    def __call__(self, key: str, image: np.ndarray, caption: str | None,
                 faces: Faces | None = None) -> Sample:
        """The annotated sample of one RGB image; ``Rejected`` when filtered out.

        ``caption`` None: "a photo of <n> people" from the face count; "" is rejected.
        ``faces``: the image's ``faces`` when already detected (``faces_batch``).
        """
        if caption is not None and not caption.strip():
            raise Rejected("empty_caption")
        faces = self.faces(image) if faces is None else faces
        check_count(self.filters, len(faces))
        if caption is None:
            caption = "a photo of one person" if len(faces) == 1 else \
                f"a photo of {len(faces)} people"
        people, face_person, pose_model = self.people(image, faces)
        segmenter, characters = self.face_segmenter(), self.character_segmenter()
        bodies = characters(image, faces.boxes, people, face_person)  # (F, H, W) bool
        sample = Sample(key=key, image=image, caption=caption, boxes=faces.boxes,
                        landmarks=faces.landmarks, scores=faces.scores,
                        crops=crops_uint8(faces), people=people, face_person=face_person,
                        face_model=self.detector, pose_model=pose_model,
                        masks=face_masks(image, faces.boxes, segmenter, bodies))
        made_by = f"{characters.name}({pose_model})"
        sample.models = {"masks": f"box+25%|{segmenter.name}|{made_by}"}
        sample.character = character_on_white(image, bodies[0]) if len(bodies) else None
        if sample.character is not None:
            sample.models["character"] = made_by
        return sample
