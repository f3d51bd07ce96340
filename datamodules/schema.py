"""The keys and types of one sample in our webdataset shards, and their checks.

One sample is five tar members sharing a key (no pickle anywhere):

- ``jpg``: the RGB image;
- ``txt``: the caption, utf-8;
- ``faces.json``: ``{"boxes": [[x0, y0, x1, y1], ...], "landmarks": [[[x, y] x 5], ...],
  "scores": [...], "model": "mtcnn", "schema": SCHEMA_VERSION}``, pixels, largest box first,
  landmarks ordered (left eye, right eye, nose, mouth left, mouth right) as seen in the image;
- ``crops.npy``: ``(F, 3, 160, 160)`` uint8 aligned face crops (read with ``allow_pickle=False``);
- ``pose.json``: ``{"people": [{"body": [[x, y, c] x 18], "face": [[x, y, c] x 70] | null}],
  "face_person": [p_0, ...], "model": "..."}``; ``face_person[f]`` is the person of face ``f``
  (``-1`` or ``null``: no detected person).

Writers clip boxes to the image; ``validate`` rejects a box outside it.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ldm_ext.pose import Person

SCHEMA_VERSION = 1
KEYS = ("jpg", "txt", "faces.json", "crops.npy", "pose.json")
CROP_SIZE = 160
BOX_TOLERANCE = 1.0  # pixels a box may overhang the image (rounding in detectors)
REASONS = (
    "missing_key", "bad_image", "bad_json", "bad_npy", "bad_shape", "nan", "box_outside",
    "count_mismatch", "empty_caption", "bad_person", "schema_version", "tar_error",
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
    boxes: np.ndarray  # (F, 4) float32 xyxy
    landmarks: np.ndarray  # (F, 5, 2) float32
    scores: np.ndarray  # (F,) float32
    crops: np.ndarray  # (F, 3, 160, 160) uint8
    people: list[Person] = field(default_factory=list)
    face_person: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (F,), -1: none
    face_model: str = "mtcnn"
    pose_model: str = "openpose"

    @property
    def num_faces(self) -> int:
        return len(self.boxes)

    @property
    def hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def encode_sample(sample: Sample, quality: int = 95) -> dict[str, bytes | str]:
    """Serialise ``sample`` to the tar members of the schema (for ``webdataset.TarWriter``)."""
    jpg = io.BytesIO()
    Image.fromarray(sample.image).save(jpg, format="JPEG", quality=quality)
    crops = io.BytesIO()
    np.save(crops, np.ascontiguousarray(sample.crops, dtype=np.uint8), allow_pickle=False)
    faces = {"boxes": sample.boxes.tolist(), "landmarks": sample.landmarks.tolist(),
             "scores": sample.scores.tolist(), "model": sample.face_model,
             "schema": SCHEMA_VERSION}
    people = [{"body": p.body.tolist(), "face": None if p.face is None else p.face.tolist()}
              for p in sample.people]
    pose = {"people": people, "face_person": sample.face_person.tolist(),
            "model": sample.pose_model}
    return {"__key__": sample.key, "jpg": jpg.getvalue(), "txt": sample.caption.encode("utf-8"),
            "faces.json": json.dumps(faces).encode("utf-8"), "crops.npy": crops.getvalue(),
            "pose.json": json.dumps(pose).encode("utf-8")}


def _image(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.array(image.convert("RGB"))  # a writable copy
    except Exception as err:  # PIL raises many types for corrupt files
        raise BadSample("bad_image", str(err)) from None


def _json(data: bytes, name: str) -> dict:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadSample("bad_json", f"{name}: {err}") from None
    if not isinstance(value, dict):
        raise BadSample("bad_json", f"{name} is not an object")
    return value


def _npy(data: bytes) -> np.ndarray:
    try:  # allow_pickle=False: an object array or a pickle payload raises instead of loading
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise BadSample("bad_npy", str(err)) from None


def _array(value, dtype, shape: tuple, name: str) -> np.ndarray:
    """``value`` as an array of ``shape`` (-1 = any length); BadSample otherwise."""
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise BadSample("bad_json", f"{name}: {err}") from None
    if array.size == 0 and array.ndim == 1 and shape[0] == -1:  # [] lost its trailing dims
        array = array.reshape(0, *shape[1:])
    if array.ndim != len(shape) or any(s not in (-1, d) for s, d in zip(shape, array.shape)):
        raise BadSample("bad_shape", f"{name} has shape {array.shape}, expected {shape}")
    return array


def _person(entry) -> Person:
    if not isinstance(entry, dict) or "body" not in entry:
        raise BadSample("bad_json", "a person needs a 'body'")
    body = _array(entry["body"], np.float32, (18, 3), "body")
    face = entry.get("face")
    return Person(body=body, face=None if face is None else _array(face, np.float32, (70, 3),
                                                                   "face"))


def decode_sample(raw: dict) -> Sample:
    """Decode the raw bytes of one tar sample with our own decoders (PIL, json, npy).

    Raises ``BadSample`` for a missing key or an undecodable member; ``validate`` checks the rest.
    """
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise BadSample("missing_key", ", ".join(missing))
    faces, pose = _json(raw["faces.json"], "faces.json"), _json(raw["pose.json"], "pose.json")
    version = faces.get("schema", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BadSample("schema_version", f"{version!r}, this reader knows {SCHEMA_VERSION}")
    try:
        boxes, landmarks, scores = faces["boxes"], faces["landmarks"], faces["scores"]
        people, face_person = pose["people"], pose["face_person"]
    except KeyError as err:
        raise BadSample("bad_json", f"no field {err}") from None
    if not isinstance(people, list) or not isinstance(face_person, list):
        raise BadSample("bad_json", "pose.json 'people' and 'face_person' must be lists")
    return Sample(
        key=str(raw.get("__key__", "")), image=_image(raw["jpg"]),
        caption=raw["txt"].decode("utf-8", errors="replace"),
        boxes=_array(boxes, np.float32, (-1, 4), "boxes"),
        landmarks=_array(landmarks, np.float32, (-1, 5, 2), "landmarks"),
        scores=_array(scores, np.float32, (-1,), "scores"), crops=_npy(raw["crops.npy"]),
        people=[_person(p) for p in people],
        face_person=_array([-1 if p is None else p for p in face_person], np.int64, (-1,),
                           "face_person"),
        face_model=str(faces.get("model", "")), pose_model=str(pose.get("model", "")))


def _check_finite(sample: Sample) -> None:
    arrays = [sample.boxes, sample.landmarks, sample.scores, sample.crops]
    arrays += [a for p in sample.people for a in (p.body, p.face) if a is not None]
    if any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in arrays):
        raise BadSample("nan")


def _check_boxes(sample: Sample) -> None:
    h, w = sample.hw
    x0, y0, x1, y1 = sample.boxes.T
    low, high = -BOX_TOLERANCE, np.array([w, h, w, h]) + BOX_TOLERANCE
    if ((x1 <= x0) | (y1 <= y0)).any() or (sample.boxes < low).any() or \
            (sample.boxes > high).any():
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
    linked = sample.face_person[sample.face_person >= 0]
    if (sample.face_person < -1).any() or (linked >= len(sample.people)).any() or \
            len(np.unique(linked)) != len(linked):
        raise BadSample("bad_person", f"face_person {sample.face_person.tolist()} for "
                                      f"{len(sample.people)} people")


def validate(sample: Sample) -> Sample:
    """Check a decoded sample and return it unchanged; raise ``BadSample(reason)`` otherwise.

    Checks: finite numbers (``nan``), image shape, boxes inside the image, one landmark set,
    score, crop and person link per box, crops ``(F, 3, 160, 160)`` uint8, person links in
    range and one face per person at most, non-empty caption.
    """
    if sample.image.ndim != 3 or sample.image.shape[2] != 3 or min(sample.hw) < 1:
        raise BadSample("bad_image", f"image shape {sample.image.shape}")
    if not sample.caption.strip():
        raise BadSample("empty_caption")
    _check_finite(sample)
    _check_counts(sample)
    _check_boxes(sample)
    return sample
