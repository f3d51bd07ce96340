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

Optional members (written by ``datamodules.prepare``; a reader that does not need them may
ignore them, so the schema version stays 1):

- ``masks.png``: per-face masks as one grayscale PNG of ``(F * H, W)`` (face ``f`` in rows
  ``f*H .. (f+1)*H``), bit flags per pixel: ``MASK_BOX`` = face box enlarged by 25 %
  (InstantFamily's face region), ``MASK_SEG`` = face parsing / ellipse segmentation;
- ``character.jpg``: the main person on white (StoryMaker's character crop);
- ``reference.npy``: ``(3, 160, 160)`` uint8 face crop of the subject from another frame
  (PortraitBooth's reference, video sources);
- ``meta.json``: ``{"models": {"masks": ..., "character": ..., "reference": ...},
  "source": ...}``, which model produced each optional annotation.

Writers clip boxes to the image; ``validate`` rejects a box outside it.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from ldm_ext.pose import Person

SCHEMA_VERSION = 1
KEYS = ("jpg", "txt", "faces.json", "crops.npy", "pose.json")
OPTIONAL_KEYS = ("masks.png", "character.jpg", "reference.npy", "meta.json")
CROP_SIZE = 160
MASK_BOX, MASK_SEG = 1, 2  # bit flags of masks.png
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
BOX_TOLERANCE = 1.0  # pixels a box may overhang the image (rounding in detectors)
REASONS = (
    "missing_key", "bad_image", "bad_json", "bad_npy", "bad_shape", "nan", "box_outside",
    "count_mismatch", "empty_caption", "bad_person", "schema_version", "tar_error",
    "too_large", "duplicate_key", "no_faces",
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
    masks: np.ndarray | None = None  # (F, H, W) uint8 bit flags MASK_BOX | MASK_SEG
    character: np.ndarray | None = None  # (h, w, 3) uint8 RGB, person on white
    reference: np.ndarray | None = None  # (3, 160, 160) uint8 face crop from another frame
    models: dict = field(default_factory=dict)  # producer of each optional annotation

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
    raw = {"__key__": sample.key, "jpg": jpg.getvalue(), "txt": sample.caption.encode("utf-8"),
           "faces.json": json.dumps(faces).encode("utf-8"), "crops.npy": crops.getvalue(),
           "pose.json": json.dumps(pose).encode("utf-8")}
    return {**raw, **_encode_optional(sample, quality)}


def _encode_optional(sample: Sample, quality: int) -> dict[str, bytes]:
    """The optional members of ``sample`` that are set (see the module doc)."""
    out = {}
    if sample.masks is not None and len(sample.masks):  # no faces: no masks member
        png = io.BytesIO()
        stacked = np.ascontiguousarray(sample.masks, np.uint8).reshape(-1, sample.hw[1])
        Image.fromarray(stacked).save(png, format="PNG")
        out["masks.png"] = png.getvalue()
    if sample.character is not None:
        jpg = io.BytesIO()
        Image.fromarray(sample.character).save(jpg, format="JPEG", quality=quality)
        out["character.jpg"] = jpg.getvalue()
    if sample.reference is not None:
        ref = io.BytesIO()
        np.save(ref, np.ascontiguousarray(sample.reference, np.uint8), allow_pickle=False)
        out["reference.npy"] = ref.getvalue()
    if sample.models:
        out["meta.json"] = json.dumps({"models": sample.models}).encode("utf-8")
    return out


def _open(data: bytes) -> Image.Image:
    """The image header (no pixels decoded yet); its pixel count is checked here."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as err:  # PIL raises many types for corrupt files
        raise BadSample("bad_image", str(err)) from None
    if image.width * image.height > MAX_PIXELS:
        raise BadSample("too_large", f"{image.width}x{image.height} image")
    return image


def _jpeg(data: bytes) -> np.ndarray:
    """(H, W, 3) RGB of a complete JPEG, decoded by OpenCV (libjpeg-turbo; about 2-3x
    faster than PIL here). EXIF orientation is ignored, as PIL (and our writers) do.
    OpenCV decodes a truncated JPEG with grey fill, so a missing end marker is refused."""
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise BadSample("bad_image", "truncated JPEG (no end-of-image marker)")
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise BadSample("bad_image", "OpenCV cannot decode the JPEG")
    return image


def _image(data: bytes, mode: str = "RGB") -> np.ndarray:
    """Decoded image (a writable array); the pixel count is checked before decoding."""
    image = _open(data)
    if mode == "RGB" and image.format == "JPEG":
        return _jpeg(data)
    try:
        image.load()
        if image.mode != mode:
            image = image.convert(mode)
        return np.array(image)  # one copy, writable
    except Exception as err:
        raise BadSample("bad_image", str(err)) from None


def _masks(data: bytes, num_faces: int, width: int) -> np.ndarray:
    """(F, H, W) masks from the stacked PNG; its size is checked by ``validate``."""
    stacked = _image(data, mode="L")  # (F * H, W)
    if num_faces == 0 or stacked.shape[0] % num_faces or stacked.shape[1] != width:
        raise BadSample("bad_shape", f"masks {stacked.shape} for {num_faces} faces, width {width}")
    return stacked.reshape(num_faces, -1, width)


def _check_mask_header(data: bytes, sample: Sample) -> None:
    """The stacked masks' size from the PNG header alone: ``(F * H, W)``."""
    width, height = _open(data).size
    wanted = (sample.hw[1], sample.num_faces * sample.hw[0])
    if (width, height) != wanted:
        raise BadSample("bad_shape", f"masks {width}x{height}, expected {wanted[0]}x{wanted[1]}")


def _decode_optional(raw: dict, sample: Sample, optional: tuple[str, ...]) -> Sample:
    """Fill the optional members present in ``raw`` and named in ``optional`` into
    ``sample``; masks not asked for are still checked (size, from the PNG header)."""
    if "masks.png" in raw:
        if "masks.png" in optional:
            sample.masks = _masks(raw["masks.png"], sample.num_faces, sample.hw[1])
        else:
            _check_mask_header(raw["masks.png"], sample)
    if "character.jpg" in raw and "character.jpg" in optional:
        sample.character = _image(raw["character.jpg"])
    if "reference.npy" in raw and "reference.npy" in optional:
        sample.reference = _npy(raw["reference.npy"])
    if "meta.json" in raw:
        models = _json(raw["meta.json"], "meta.json").get("models", {})
        if not isinstance(models, dict):
            raise BadSample("bad_json", "meta.json 'models' must be an object")
        sample.models = {str(k): str(v) for k, v in models.items()}
    return sample


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


def decode_sample(raw: dict, optional: tuple[str, ...] = OPTIONAL_KEYS) -> Sample:
    """Decode the raw bytes of one tar sample with our own decoders (PIL, json, npy).

    ``optional``: the optional members to decode (a view that needs none of them saves their
    decoding). Raises ``BadSample`` for a missing key or an undecodable member; ``validate``
    checks the rest.
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
    sample = Sample(
        key=str(raw.get("__key__", "")), image=_image(raw["jpg"]),
        caption=raw["txt"].decode("utf-8", errors="replace"),
        boxes=_array(boxes, np.float32, (-1, 4), "boxes"),
        landmarks=_array(landmarks, np.float32, (-1, 5, 2), "landmarks"),
        scores=_array(scores, np.float32, (-1,), "scores"), crops=_npy(raw["crops.npy"]),
        people=[_person(p) for p in people],
        face_person=_array([-1 if p is None else p for p in face_person], np.int64, (-1,),
                           "face_person"),
        face_model=str(faces.get("model", "")), pose_model=str(pose.get("model", "")))
    return _decode_optional(raw, sample, optional)


def _check_finite(sample: Sample) -> None:
    arrays = [sample.boxes, sample.landmarks, sample.scores, sample.crops]
    arrays += [a for a in (sample.masks, sample.reference) if a is not None]
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
    _check_optional(sample)
    if (sample.face_person < -1).any() or (linked >= len(sample.people)).any() or \
            len(np.unique(linked)) != len(linked):
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


def validate(sample: Sample) -> Sample:
    """Check a decoded sample and return it unchanged; raise ``BadSample(reason)`` otherwise.

    Checks: finite numbers (``nan``), image shape, boxes inside the image, one landmark set,
    score, crop and person link per box, crops ``(F, 3, 160, 160)`` uint8, person links in
    range and one face per person at most, non-empty caption; optional members: masks
    ``(F, H, W)`` uint8, character ``(h, w, 3)``, reference ``(3, 160, 160)`` uint8.
    """
    if sample.image.ndim != 3 or sample.image.shape[2] != 3 or min(sample.hw) < 1:
        raise BadSample("bad_image", f"image shape {sample.image.shape}")
    if not sample.caption.strip():
        raise BadSample("empty_caption")
    _check_finite(sample)
    _check_counts(sample)
    _check_boxes(sample)
    return sample
