"""Pose files: the formats people have, read into one layout (``keypoints.Person``:
COCO-18 body, optional 70-point face, pixels, confidence 0 = missing), and idforge's own
written (``save_people``).

Three JSON formats are read (a file's format is told by its keys):

- OpenPose's ``--write_json`` output: ``{"version": ..., "people": [{"pose_keypoints_2d":
  [x0, y0, c0, x1, ...], "face_keypoints_2d": [...], "hand_left_keypoints_2d": ...}]}``.
  The body is BODY_25 (25 points, OpenPose's default model) or COCO (18); BODY_25 is the
  COCO-18 points plus MidHip (index 8) and six foot points (19-24), which ControlNet's
  OpenPose drawing has no place for, so they are dropped. Coordinates are pixels of the
  input image, whose size OpenPose does not store: ``canvas_width`` / ``canvas_height``
  are used when present; without them the frame is the keypoints' bounding box plus
  ``FRAME_MARGIN`` of its longer side on each side, and the pose is fitted onto the
  generated image (it then fixes no image size).
- controlnet_aux's pose JSON (``encode_poses_as_dict``, written by ComfyUI's and
  sd-webui-controlnet's OpenPose preprocessors): the same keys with ``canvas_width`` /
  ``canvas_height`` and coordinates normalised to 0..1; missing points are ``[0, 0, 0]``
  and face points the face model did not find sit at negative coordinates. As those tools
  do, a file whose present points all lie within [-1, 1] is taken as normalised.
- idforge's own (``save_people``): ``{"people": [{"body": [[x, y, c], ...],
  "face": [[x, y, c], ...] | null}], "width": W, "height": H}`` (size null: the keypoints
  are pixels of the generated image).

Faces have OpenPose's 70 points (iBUG 68 + two pupils); DWPose's 68-point faces (through
the same controlnet_aux JSON) get the two pupils as missing. Hands are ignored: control
images are drawn without them, as in training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ldm_ext.cli import InputError

from .keypoints import BODY_PARTS, NUM_FACE_POINTS, Person

# BODY_25 index of each COCO-18 keypoint (OpenPose doc/02_output.md orders): both start
# nose, neck, arms (0-7); BODY_25 then has MidHip at 8, so its legs and head sit one later.
BODY_25_TO_COCO_18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
BODY_LAYOUTS = {len(BODY_PARTS): tuple(range(len(BODY_PARTS))), 25: BODY_25_TO_COCO_18}
FACE_POINTS_WITHOUT_PUPILS = 68  # DWPose's faces
# The formats in a few words, for command-line help.
FRAME_MARGIN = 0.1  # of the keypoints' box's longer side, when a file stores no size
EXPECTED = (
    'one of: OpenPose JSON {"people": [{"pose_keypoints_2d": 25 (BODY_25) or 18 (COCO) '
    'x [x, y, c], "face_keypoints_2d": 70 x [x, y, c] (optional)}], "canvas_width": W, '
    '"canvas_height": H (optional)}; controlnet_aux\'s pose JSON (the same keys, x and y in '
    '0..1, with canvas_width and canvas_height); idforge\'s {"people": [{"body": '
    f'{len(BODY_PARTS)} x [x, y, c], "face": {NUM_FACE_POINTS} x [x, y, c] or null}}], '
    '"width": W, "height": H}')


class PoseFile(NamedTuple):
    """A pose file's people and the (height, width) frame of their keypoints: the file's
    own size (``stored_size``), a frame inferred from the keypoints (not ``stored_size``:
    fit it onto the image), or None (pixels of the generated image)."""

    people: list[Person]
    hw: tuple[int, int] | None
    stored_size: bool


def save_people(people: list[Person], path: str | Path,
                hw: tuple[int, int] | None = None) -> None:
    """Write idforge's pose JSON: {"people": [{"body": [[x, y, c], ...], "face": ... | null}],
    "width": W, "height": H} (width/height null when ``hw`` = (height, width) is not given).
    The size keys are named, so files stay readable whatever order code uses."""
    height, width = hw if hw is not None else (None, None)
    records = [{"body": p.body.tolist(), "face": None if p.face is None else p.face.tolist()}
               for p in people]
    Path(path).write_text(json.dumps({"people": records, "width": width, "height": height}))


def load_pose(path: str | Path) -> PoseFile:
    """The people of a pose file in any of the module's formats; a missing file, bad JSON,
    another layout or keypoints of the wrong count are an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pose {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"pose {path}: not JSON ({err})") from None
    try:
        pose = _parse(data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise InputError(f"pose {path}: expected {EXPECTED} ({type(err).__name__}: "
                         f"{err})") from None
    if not pose.people or (pose.hw is not None and min(pose.hw) < 1):
        raise InputError(f"pose {path}: needs at least one person and a positive width/height")
    return pose


def _parse(data: dict) -> PoseFile:
    """PoseFile of decoded JSON; the format is told by the first person's keys."""
    people = data["people"]
    if not isinstance(people, list):
        raise TypeError("'people' is not a list")
    if not people:
        return PoseFile([], None, False)
    if "body" in people[0]:
        return _parse_idforge(data)
    return _parse_openpose(data)


def _parse_idforge(data: dict) -> PoseFile:
    """idforge's own layout (``save_people``)."""
    people = [Person(body=np.array(p["body"]),
                     face=None if p.get("face") is None else np.array(p["face"]))
              for p in data["people"]]
    hw = None if data.get("width") is None else (int(data["height"]), int(data["width"]))
    return PoseFile(people, hw, hw is not None)


def _keypoints(person: dict, name: str) -> np.ndarray | None:
    """(K, 3) float32 of ``<name>_keypoints_2d``; None when absent, null or empty."""
    values = person.get(f"{name}_keypoints_2d")
    if not values:
        return None
    points = np.asarray(values, dtype=np.float32)
    if points.ndim != 1 or len(points) % 3:
        raise ValueError(f"{name} keypoints: {len(points)} numbers, not x, y, c triples")
    return points.reshape(-1, 3)


def _body(person: dict) -> np.ndarray:
    """(18, 3) COCO-18 body of an OpenPose person (BODY_25 mapped, feet and MidHip dropped)."""
    points = _keypoints(person, "pose")
    if points is None:
        raise KeyError("pose_keypoints_2d")
    if len(points) not in BODY_LAYOUTS:
        raise ValueError(f"{len(points)} body keypoints, not 25 (BODY_25) or 18 (COCO)")
    return points[list(BODY_LAYOUTS[len(points)])]


def _face(person: dict) -> np.ndarray | None:
    """(70, 3) face of an OpenPose person, or None; 68 points get two missing pupils."""
    points = _keypoints(person, "face")
    if points is None:
        return None
    if len(points) == FACE_POINTS_WITHOUT_PUPILS:
        points = np.concatenate([points, np.zeros((2, 3), np.float32)])
    if len(points) != NUM_FACE_POINTS:
        raise ValueError(f"{len(points)} face keypoints, not {NUM_FACE_POINTS}")
    return points


def _parse_openpose(data: dict) -> PoseFile:
    """OpenPose's JSON or controlnet_aux's: normalised coordinates are scaled by the canvas,
    and a file without a canvas gets a frame around its keypoints."""
    parts = [(_body(p), _face(p)) for p in data["people"]]
    hw = None
    if data.get("canvas_width") is not None:
        hw = (int(data["canvas_height"]), int(data["canvas_width"]))
    if _normalised(parts):
        if hw is None:
            raise ValueError("coordinates in 0..1 need canvas_width and canvas_height")
        parts = [tuple(_to_pixels(points, hw) for points in person) for person in parts]
    if hw is not None:
        return PoseFile([Person(body, face) for body, face in parts], hw, True)
    return _framed([Person(body, face) for body, face in parts])


def _present(points: np.ndarray | None) -> np.ndarray:
    """(K, 2) coordinates of the points with confidence > 0."""
    return np.zeros((0, 2), np.float32) if points is None else points[points[:, 2] > 0, :2]


def _normalised(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> bool:
    """Whether every present point lies within [-1, 1] (controlnet_aux's coordinates in
    0..1, its missing face points slightly below 0); False when none is present."""
    present = np.concatenate([_present(points) for person in parts for points in person])
    return len(present) > 0 and bool((np.abs(present) <= 1).all())


def _to_pixels(points: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray | None:
    """Normalised (K, 3) points in pixels of ``hw``; points at negative coordinates
    (controlnet_aux: not found) become missing."""
    if points is None:
        return None
    pixels = points.copy()
    pixels[:, :2] *= np.array([hw[1], hw[0]], np.float32)
    pixels[(points[:, :2] < 0).any(axis=1), 2] = 0
    return pixels


def _framed(people: list[Person]) -> PoseFile:
    """People moved into a frame of their keypoints' box plus ``FRAME_MARGIN`` of its
    longer side on each side (for files that store no image size)."""
    present = np.concatenate([_present(points) for p in people for points in (p.body, p.face)])
    if not len(present):
        raise ValueError("no keypoint has a confidence above 0")
    lo, hi = present.min(0), present.max(0)
    margin = FRAME_MARGIN * max(float((hi - lo).max()), 1.0)
    origin = lo - margin
    width, height = (math.ceil(v) for v in hi - lo + 2 * margin)

    def move(points: np.ndarray | None) -> np.ndarray | None:
        if points is None:
            return None
        moved = points.copy()
        moved[:, :2] -= origin
        return moved

    return PoseFile([Person(move(p.body), move(p.face)) for p in people], (height, width),
                    False)
