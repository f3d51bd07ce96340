"""Tar members <-> ``Sample``: our encoders and decoders for the shard schema
(``datamodules/schema.py``): JPEG/PNG, json and npy, never pickle.

Decoders raise ``BadSample`` for a missing key or an undecodable member (the reason is
the skip counter's key); the image's pixel count is checked from its header before any
pixel is decoded (decompression bombs).

Training at R px from larger sources (prepare keeps up to 1024 px): ``decode_sample(...,
min_side=R)`` has libjpeg decode the JPEG at 1/2, 1/4 or 1/8 scale (its DCT-domain
reduction, through OpenCV), the smallest scale whose shorter side stays >= R, and scales
the sample's geometry (boxes, landmarks, keypoints, masks) with it.
"""
from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass

import cv2
import numpy as np
import orjson
from PIL import Image

from datamodules.image_header import image_header
from datamodules.schema import (KEYS, MAX_CAPTION_BYTES, MAX_PIXELS, OPTIONAL_KEYS,
                                SCHEMA_VERSION, BadSample, Sample)
from ldm_ext.perception.pose import Person


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
    if sample.models or sample.source:
        meta = {"models": sample.models, **({"source": sample.source} if sample.source else {})}
        out["meta.json"] = json.dumps(meta).encode("utf-8")
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


def _header(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of an image from its header (``image_header``, else PIL's),
    its pixel count checked."""
    header = image_header(data)
    bomb = Image.MAX_IMAGE_PIXELS and header and header[1] * header[2] > 2 * Image.MAX_IMAGE_PIXELS
    if header is None or bomb:  # PIL decides: it refuses bombs as bad_image
        image = _open(data)
        return image.format, image.width, image.height
    if header[1] * header[2] > MAX_PIXELS:
        raise BadSample("too_large", f"{header[1]}x{header[2]} image")
    return header


# libjpeg's reduced decoding through OpenCV: these flags carry only the scale bits
# (IMREAD_GRAYSCALE is 0); IMREAD_COLOR_RGB asks for colour
REDUCED = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
           8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def _jpeg(data: bytes, factor: int = 1) -> np.ndarray:
    """(H / factor, W / factor, 3) RGB (sides rounded up) of a complete JPEG, decoded by
    OpenCV (libjpeg-turbo; about 2-3x faster than PIL here) at ``factor`` 1, 2, 4 or 8.
    EXIF orientation is ignored, as PIL (and our writers) do. OpenCV decodes a truncated
    JPEG with grey fill, so a missing end marker is refused."""
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise BadSample("bad_image", "truncated JPEG (no end-of-image marker)")
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION | REDUCED[factor]
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


def _reduction(kind: str, hw: tuple[int, int], min_side: int) -> int:
    """The reduction k an image is decoded at: for a JPEG the largest k in 2, 4, 8 that keeps
    its shorter side at least ``min_side`` (0: always k = 1); 1 for other formats."""
    factor = 1
    while kind == "JPEG" and factor < 8 and min_side and -(-min(hw) // (2 * factor)) >= min_side:
        factor *= 2
    return factor


def _rescaled(sample: Sample, factor: int) -> Sample:
    """``sample``'s geometry, given for the stored image, moved onto the image decoded at
    1 / ``factor``: x and y divided by it (libjpeg's output pixel i covers stored pixels
    [k i, k i + k)), masks resized by nearest neighbour."""
    if factor == 1:
        return sample
    sample.boxes = sample.boxes / np.float32(factor)
    sample.landmarks = sample.landmarks / np.float32(factor)
    for person in sample.people:
        for points in (p for p in (person.body, person.face) if p is not None):
            points[:, :2] /= factor
    if sample.masks is not None:  # (F, H, W), F >= 1 (no faces: no masks member)
        size = sample.hw[::-1]
        sample.masks = np.stack([cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
                                 for mask in sample.masks])
    return sample


def _masks(data: bytes, num_faces: int, width: int) -> np.ndarray:
    """(F, H, W) masks from the stacked PNG; its size is checked by ``validate``."""
    stacked = _image(data, mode="L")  # (F * H, W)
    if num_faces == 0 or stacked.shape[0] % num_faces or stacked.shape[1] != width:
        raise BadSample("bad_shape", f"masks {stacked.shape} for {num_faces} faces, width {width}")
    return stacked.reshape(num_faces, -1, width)


def _check_mask_header(data: bytes, sample: Sample, hw: tuple[int, int]) -> None:
    """The stacked masks' size from the PNG header alone: ``(F * H, W)`` of ``hw``."""
    _, width, height = _header(data)
    wanted = (hw[1], sample.num_faces * hw[0])
    if (width, height) != wanted:
        raise BadSample("bad_shape", f"masks {width}x{height}, expected {wanted[0]}x{wanted[1]}")


def _decode_optional(raw: dict, sample: Sample, optional: tuple[str, ...],
                     hw: tuple[int, int]) -> Sample:
    """Fill the optional members present in ``raw`` and named in ``optional`` into
    ``sample``; masks (of the stored image size ``hw``) not asked for are still checked
    (size, from the PNG header)."""
    if "masks.png" in raw:
        if "masks.png" in optional:
            sample.masks = _masks(raw["masks.png"], sample.num_faces, hw[1])
        else:
            _check_mask_header(raw["masks.png"], sample, hw)
    if "character.jpg" in raw and "character.jpg" in optional:
        sample.character = _image(raw["character.jpg"])
    if "reference.npy" in raw and "reference.npy" in optional:
        sample.reference = _npy(raw["reference.npy"])
    if "meta.json" in raw:
        meta = _json(raw["meta.json"], "meta.json")
        models, source = meta.get("models", {}), meta.get("source", {})
        if not isinstance(models, dict) or not isinstance(source, dict):
            raise BadSample("bad_json", "meta.json 'models' and 'source' must be objects")
        sample.models, sample.source = {str(k): str(v) for k, v in models.items()}, source
    return sample


def _json(data: bytes, name: str) -> dict:
    """A JSON object, parsed by orjson (several times faster than ``json`` on the float
    arrays of pose.json); what orjson refuses is retried with ``json``, which also reads
    NaN / Infinity, so that ``validate`` reports those as ``nan``, not as bad JSON."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadSample("bad_json", f"{name}: {err}") from None
    if not isinstance(value, dict):
        raise BadSample("bad_json", f"{name} is not an object")
    return value


@functools.lru_cache(maxsize=256)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of an .npy header (magic to the end of the header
    dict), parsed by numpy. Cached: a shard's arrays share a handful of headers, and
    numpy's parse (``ast.literal_eval``) costs more than copying a sample's face crops."""
    stream = io.BytesIO(head)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


def _npy(data: bytes) -> np.ndarray:
    """The array of .npy bytes as a read-only view of them (no copy; copy it to write),
    never unpickled: object arrays are refused as ``np.load(allow_pickle=False)`` does."""
    try:
        if data[:6] != b"\x93NUMPY" or len(data) < 10:
            raise ValueError("not an .npy file")
        length_bytes = 2 if data[6] == 1 else 4  # header length field: format 1.0 vs 2.0/3.0
        offset = 8 + length_bytes + int.from_bytes(data[8:8 + length_bytes], "little")
        shape, fortran, dtype = _npy_header(bytes(data[:offset]))
        if dtype.hasobject:
            raise ValueError("object arrays cannot be read without pickle")
        flat = np.frombuffer(data, dtype, count=math.prod(shape), offset=offset)
    except (ValueError, OSError, EOFError) as err:
        raise BadSample("bad_npy", str(err)) from None
    return flat.reshape(shape, order="F" if fortran else "C")


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


def _people(entries: list) -> list[Person]:
    """The people of pose.json. Well-formed ones (the rule) take one numpy conversion for all
    bodies and one for all faces, their arrays views of those; anything else goes person by
    person through ``_person``, whose checks name the fault."""
    try:
        bodies = np.asarray([entry["body"] for entry in entries], np.float32)
        faces = [entry.get("face") for entry in entries]
        face_points = np.asarray([face for face in faces if face is not None], np.float32)
    except (TypeError, ValueError, KeyError, AttributeError):
        return [_person(entry) for entry in entries]
    if not entries or bodies.shape[1:] != (18, 3) or \
            (len(face_points) and face_points.shape[1:] != (70, 3)) or \
            not all(isinstance(entry, dict) for entry in entries):
        return [_person(entry) for entry in entries]
    face_points = iter(face_points)
    return [Person(body=body, face=None if face is None else next(face_points))
            for body, face in zip(bodies, faces)]


@dataclass
class Unpacked:
    """A sample read but for its pixels (``read_sample``); ``decode_pixels`` finishes it."""

    raw: dict
    fields: dict  # the Sample's fields but its image
    kind: str  # image format
    stored: tuple[int, int]  # (H, W) of the stored image
    factor: int  # reduction the image is decoded at
    optional: tuple[str, ...]
    fault: BadSample | None  # an annotation fault: raised after the pixels are decoded


def decode_sample(raw: dict, optional: tuple[str, ...] = OPTIONAL_KEYS,
                  min_side: int = 0) -> Sample:
    """Decode the raw bytes of one tar sample with our own decoders (PIL, json, npy).

    ``optional``: the optional members to decode (a view that needs none of them saves their
    decoding). ``min_side``: the shorter image side training needs; a JPEG at least twice
    as large is decoded at a reduced scale (module doc). Raises ``BadSample`` for a missing
    key or an undecodable member; ``validate`` checks the rest.
    """
    return decode_pixels(read_sample(raw, optional, min_side))


def read_sample(raw: dict, optional: tuple[str, ...] = OPTIONAL_KEYS,
                min_side: int = 0) -> Unpacked:
    """``decode_sample`` but for the pixels: members, JSON, image header, arrays; the light,
    Python-heavy part, which a loader runs for several samples in a row (its code stays
    warm) before their pixels. A fault of the arrays waits in ``fault``: ``decode_sample``
    reports a bad image before it."""
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise BadSample("missing_key", ", ".join(missing))
    if len(raw["txt"]) > MAX_CAPTION_BYTES:  # skipped before decoding megabytes of text
        raise BadSample("long_caption", f"{len(raw['txt'])} bytes")
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
    kind, width, height = _header(raw["jpg"])
    fields, fault = {}, None
    try:
        fields = dict(
            key=str(raw.get("__key__", "")), caption=raw["txt"].decode("utf-8", errors="replace"),
            boxes=_array(boxes, np.float32, (-1, 4), "boxes"),
            landmarks=_array(landmarks, np.float32, (-1, 5, 2), "landmarks"),
            scores=_array(scores, np.float32, (-1,), "scores"), crops=_npy(raw["crops.npy"]),
            people=_people(people),
            face_person=_array([-1 if p is None else p for p in face_person], np.int64, (-1,),
                               "face_person"),
            face_model=str(faces.get("model", "")), pose_model=str(pose.get("model", "")))
    except BadSample as err:
        fault = err
    return Unpacked(raw, fields, kind, (height, width),
                    _reduction(kind, (height, width), min_side), optional, fault)


def decode_pixels(unpacked: Unpacked) -> Sample:
    """The sample of ``read_sample``: its image decoded (a bad image is refused before a
    fault of its arrays), then its optional members, its geometry scaled to the image."""
    data = unpacked.raw["jpg"]
    image = _jpeg(data, unpacked.factor) if unpacked.kind == "JPEG" else _image(data)
    if unpacked.fault is not None:
        raise unpacked.fault
    sample = Sample(image=image, **unpacked.fields)
    return _rescaled(_decode_optional(unpacked.raw, sample, unpacked.optional,
                                      unpacked.stored), unpacked.factor)
