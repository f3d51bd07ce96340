"""The keys and types of one sample in our webdataset shards, and their checks.

One sample is five tar members sharing a key (no pickle anywhere):

- ``jpg``: the RGB image;
- ``txt``: the caption, utf-8, at most ``MAX_CAPTION_CHARS`` characters (``prepare``
  truncates longer ones and counts them in ``stats.json`` ``notes``; a reader skips a longer
  one as ``long_caption``: the text encoders read 77 CLIP tokens, and tokenizing megabytes
  of text stalls every draw of the sample);
- ``faces.json``: ``{"boxes": [[x0, y0, x1, y1], ...], "landmarks": [[[x, y] x 5], ...],
  "scores": [...], "model": "mtcnn", "schema": SCHEMA_VERSION}``, pixels, largest box first,
  landmarks ordered (left eye, right eye, nose, mouth left, mouth right) as seen in the image;
- ``crops.npy``: ``(F, 3, 160, 160)`` uint8 aligned face crops (read with ``allow_pickle=False``);
- ``pose.json``: ``{"people": [{"body": [[x, y, c] x 18], "face": [[x, y, c] x 70] | null}],
  "face_person": [p_0, ...], "model": "..."}``; ``face_person[f]`` is the person of face ``f``
  (``-1`` or ``null``: no detected person).

Optional members (written by ``datamodules.prepare``; a reader that does not need them may
ignore them, so the schema version stays 1):

- ``masks.png``: per-face masks as one grayscale PNG of ``(F * H, W)`` (face ``f`` in rows
  ``f*H .. (f+1)*H``), bit flags per pixel: ``MASK_BOX`` = face box enlarged by 25 %
  (InstantFamily's face region), ``MASK_SEG`` = face parsing / ellipse segmentation,
  ``MASK_CHAR`` = the face's character: face, hair, body, clothes (StoryMaker's mask;
  shards written before it have no such bit);
- ``character.jpg``: the main face's character on white (StoryMaker's character crop);
- ``reference.npy``: ``(3, 160, 160)`` uint8 face crop of the subject (face 0, the
  largest) from another frame (PortraitBooth's reference, video sources); a transform that
  crops face 0 away drops it;
- ``meta.json``: ``{"models": {"masks": ..., "character": ..., "reference": ...},
  "source": {...}}``, which model produced each optional annotation, and the input's own
  metadata (img2dataset's columns: ``SAMPLE_ID``, ``LICENSE``, ``NSFW``, ``similarity``,
  ``url``...; absent when the input had none).

Writers store boxes as the detector gives them: a face cut by the image edge keeps its
whole box, which overhangs the image (so its 25 % region is grown from the whole box and
clipped after); ``validate`` rejects a box with no part inside the image. Bytes to
``Sample`` and back: ``datamodules/codec.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ldm_ext.perception.pose import Person

SCHEMA_VERSION = 1
KEYS = ("jpg", "txt", "faces.json", "crops.npy", "pose.json")
OPTIONAL_KEYS = ("masks.png", "character.jpg", "reference.npy", "meta.json")
CROP_SIZE = 160
MASK_BOX, MASK_SEG, MASK_CHAR = 1, 2, 4  # bit flags of masks.png
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
# far beyond the 77 CLIP tokens the text encoders read (a token spans ~4 characters)
MAX_CAPTION_CHARS = 1000
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS  # utf-8: at most 4 bytes a character
CAPTION_TRUNCATED = "caption_truncated"  # the stats.json note of a truncated caption
REASONS = (
    "missing_key", "bad_image", "bad_json", "bad_npy", "bad_shape", "nan", "box_outside",
    "count_mismatch", "empty_caption", "bad_person", "schema_version", "tar_error",
    "too_large", "duplicate_key", "no_faces", "too_many_people", "long_caption",
)


class BadSample(ValueError):
    """A sample that must be skipped; ``reason`` is one of ``REASONS`` (the counting key)."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; add it to schema.REASONS")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Sample:
    """One decoded sample; geometry in pixels of ``image``."""

    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    caption: str
    boxes: np.ndarray  # (F, 4) float32 xyxy; a cut face's box overhangs the image
    landmarks: np.ndarray  # (F, 5, 2) float32
    scores: np.ndarray  # (F,) float32
    crops: np.ndarray  # (F, 3, 160, 160) uint8
    people: list[Person] = field(default_factory=list)
    face_person: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (F,), -1: none
    face_model: str = "mtcnn"
    pose_model: str = "openpose"
    masks: np.ndarray | None = None  # (F, H, W) uint8 bit flags MASK_BOX | MASK_SEG | MASK_CHAR
    character: np.ndarray | None = None  # (h, w, 3) uint8 RGB, person on white
    reference: np.ndarray | None = None  # (3, 160, 160) uint8 face crop from another frame
    models: dict = field(default_factory=dict)  # producer of each optional annotation
    source: dict = field(default_factory=dict)  # the input's own metadata (img2dataset columns)
    # set by the training transform, never stored: the decoded sample before it, and which
    # of its faces each face here is (views that cut references from the original photo)
    original: Sample | None = field(default=None, repr=False)
    original_faces: np.ndarray | None = None  # (F,) int64

    @property
    def num_faces(self) -> int:
        return len(self.boxes)

    @property
    def hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def _check_finite(sample: Sample) -> None:
    """No NaN or infinity in any float array: all checked in one pass over their
    concatenation (a sample has a dozen small arrays, and the loader checks every sample)."""
    arrays = [sample.boxes, sample.landmarks, sample.scores, sample.crops]
    arrays += [a for a in (sample.masks, sample.reference) if a is not None]
    arrays += [a for p in sample.people for a in (p.body, p.face) if a is not None]
    floats = [a.ravel() for a in arrays if a.dtype.kind == "f"]
    if floats and not np.isfinite(np.concatenate(floats)).all():
        raise BadSample("nan")


def _check_boxes(sample: Sample) -> None:
    """Every box has a positive size and a part inside the image (a handful of boxes:
    compared as Python floats, cheaper than a dozen numpy calls)."""
    h, w = sample.hw
    for x0, y0, x1, y1 in sample.boxes.tolist():  # empty, or no part inside the image
        if x1 <= x0 or y1 <= y0 or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise BadSample("box_outside", f"boxes {sample.boxes.tolist()} in {w}x{h}")


def _check_counts(sample: Sample) -> None:
    f = sample.num_faces
    counts = [len(sample.landmarks), len(sample.scores), len(sample.crops),
              len(sample.face_person)]
    if any(c != f for c in counts):
        raise BadSample("count_mismatch", f"{f} boxes vs landmarks/scores/crops/face_person "
                                          f"{counts}")
    if sample.crops.shape[1:] != (3, CROP_SIZE, CROP_SIZE) or sample.crops.dtype != np.uint8:
        raise BadSample("bad_shape", f"crops {sample.crops.dtype} {sample.crops.shape}")
    links = sample.face_person.tolist()
    linked = [p for p in links if p >= 0]
    _check_optional(sample)
    if any(p < -1 for p in links) or any(p >= len(sample.people) for p in linked) or \
            len(set(linked)) != len(linked):
        raise BadSample("bad_person", f"face_person {sample.face_person.tolist()} for "
                                      f"{len(sample.people)} people")


def _check_optional(sample: Sample) -> None:
    """Masks one per face at the image size, uint8; character an RGB image; reference a crop."""
    wanted = (sample.num_faces, *sample.hw)
    masks = sample.masks
    if masks is not None and (masks.shape != wanted or masks.dtype != np.uint8):
        raise BadSample("bad_shape", f"masks {masks.dtype} {masks.shape}, expected {wanted}")
    if sample.character is not None and (sample.character.ndim != 3 or
                                         sample.character.shape[2] != 3):
        raise BadSample("bad_shape", f"character {sample.character.shape}")
    if sample.reference is not None and (sample.reference.shape != (3, CROP_SIZE, CROP_SIZE)
                                         or sample.reference.dtype != np.uint8):
        raise BadSample("bad_shape", f"reference {sample.reference.dtype} "
                                     f"{sample.reference.shape}")


def cap_caption(caption: str) -> tuple[str, bool]:
    """``caption`` cut to ``MAX_CAPTION_CHARS`` characters, and whether it was cut."""
    if len(caption) <= MAX_CAPTION_CHARS:
        return caption, False
    return caption[:MAX_CAPTION_CHARS].rstrip(), True


def validate(sample: Sample) -> Sample:
    """Check a decoded sample and return it unchanged; raise ``BadSample(reason)`` otherwise.

    Checks: finite numbers (``nan``), image shape, boxes overlapping the image, one landmark set,
    score, crop and person link per box, crops ``(F, 3, 160, 160)`` uint8, person links in
    range and one face per person at most, a caption neither empty nor longer than
    ``MAX_CAPTION_CHARS``; optional members: masks
    ``(F, H, W)`` uint8, character ``(h, w, 3)``, reference ``(3, 160, 160)`` uint8.
    """
    if sample.image.ndim != 3 or sample.image.shape[2] != 3 or min(sample.hw) < 1:
        raise BadSample("bad_image", f"image shape {sample.image.shape}")
    if not sample.caption.strip():
        raise BadSample("empty_caption")
    if len(sample.caption) > MAX_CAPTION_CHARS:
        raise BadSample("long_caption", f"{len(sample.caption)} > {MAX_CAPTION_CHARS} characters")
    _check_finite(sample)
    _check_counts(sample)
    _check_boxes(sample)
    return sample
