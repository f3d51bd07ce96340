"""People as OpenPose keypoints; InstantFamily's control image and face regions.

Body keypoints use the COCO-18 order of OpenPose and controlnet_aux (``BODY_PARTS``),
face keypoints OpenPose's 70 (iBUG 68 + two pupils). "Right" is the subject's right,
i.e. the image left for a frontal person. Coordinates are pixels; confidence 0 = missing.

InstantFamily (Sec. 3.5, 4.2): the control image is the OpenPose rendering of *all*
people plus a filled circle, coloured by stacking slot, at each selected face's centre;
face regions are the face box enlarged by 25 %. Training takes that box from the face
detector, inference from the pose; ``detector_box`` maps the keypoints' box to the box the
detector gives, so inference regions have training's size and place.
"""
from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import PIL.Image

from .cli import UserError
from .face.align import apply_similarity, fit_similarity, to_rgb_array
from .openpose_draw import draw_body, draw_face
from .pose_names import (ANNOTATOR_FILES, DEFAULT_POSE_WEIGHTS,  # noqa: F401 (re-exported)
                         download_command)

BODY_PARTS = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow",
              "l_wrist", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
              "r_eye", "l_eye", "r_ear", "l_ear")
NUM_FACE_POINTS = 70
# Head keypoints and how far (x their offset from the nose) the face extends around it.
HEAD_REACH = {0: 0.0, 14: 2.2, 15: 2.2, 16: 1.1, 17: 1.1}

# One colour per stacking slot. Channels avoid OpenPose's palette ({0, 85, 170, 255} and
# x0.6 of it, limbs) and white (face points), so circles are never confused with skeletons.
# Training shows the first N (num_slots, 4 in the paper); slots beyond the table get
# generated colours (``slot_color``).
SLOT_COLORS: list[tuple[int, int, int]] = [
    (224, 32, 32), (32, 224, 32), (32, 32, 224), (224, 224, 32), (224, 32, 224),
    (32, 224, 224), (224, 128, 32), (128, 32, 224), (32, 128, 224), (128, 224, 32),
    (224, 32, 128), (32, 224, 128),
]
GOLDEN_RATIO = (math.sqrt(5.0) - 1.0) / 2.0  # hue step of generated colours


class PoseModelMissing(UserError, RuntimeError):
    """OpenPose weights are not available locally; the message says how to provide them."""


@dataclass
class Person:
    """One person: body (18, 3) and optional face (70, 3) keypoints as (x, y, confidence)."""

    body: np.ndarray
    face: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.body = np.asarray(self.body, dtype=np.float32).reshape(len(BODY_PARTS), 3)
        if self.face is not None:
            self.face = np.asarray(self.face, dtype=np.float32).reshape(NUM_FACE_POINTS, 3)


def _present(points: np.ndarray | None) -> np.ndarray:
    """(K, 2) coordinates of the keypoints with confidence > 0."""
    if points is None:
        return np.zeros((0, 2), np.float32)
    return points[points[:, 2] > 0, :2]


def _head_extent(body: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Square head box (lo, hi) from nose, eyes and ears: centred on the nose (else on the
    mean head point), half side = the largest per-axis offset of an eye x 2.2 or ear x 1.1."""
    present = [k for k in HEAD_REACH if body[k, 2] > 0]
    if len(present) < 2:
        return None
    centre = body[0, :2] if 0 in present else body[present, :2].mean(0)
    half = max(HEAD_REACH[k] * np.abs(body[k, :2] - centre).max() for k in present)
    if half <= 0:
        return None
    return centre - half, centre + half


def _keypoint_extent(person: Person) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(lo, hi, source) of the face keypoints' bounding box (source "face"), else of the
    head body keypoints (``_head_extent``, source "head"); None when neither exists."""
    points = _present(person.face)
    if len(points) >= 2:
        return points.min(0), points.max(0), "face"
    extent = _head_extent(person.body)
    return None if extent is None else (*extent, "head")


def face_box(person: Person, margin: float = 0.25) -> np.ndarray | None:
    """xyxy pixels of the face keypoints' bounding box enlarged by ``margin`` (w, h x 1.25
    about its centre for the default); falls back to head body keypoints (nose, eyes, ears)
    when there are no face keypoints. None when neither gives a box."""
    extent = _keypoint_extent(person)
    if extent is None:
        return None
    lo, hi, _ = extent
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * (1.0 + margin)
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


# Keypoint box -> face detector box, per keypoint source: (centre shift down, width scale,
# height scale) in units of the keypoint box's height, width, height. Medians over the
# seven faces MTCNN (min_score 0.95) finds in skimage's astronaut and insightface's t1.jpg,
# against the pose ``prepare`` writes without OpenPose weights (``people_from_faces`` on
# the same detections, as ``pose_template`` builds its people): its face keypoints
# ("face") and its head keypoints ("head", used when a person has no face keypoints).
# The face keypoint box had 0.76x the detector box's area (0.64-0.89 per face) and sat
# lower (the detector box takes in the forehead); mapped, 1.08x (astronaut) and 0.97x
# (t1) on average. OpenPose-style 68-point faces (dlib's 68-point predictor standing in)
# had 0.80x; mapped, 1.02x over the seven faces. No horizontal shift: training flips
# images, and the measured shifts straddle 0 (-0.03 to 0.19 box widths).
TO_DETECTOR = {"face": (-0.16, 0.95, 1.35), "head": (-0.10, 0.66, 0.84)}


def detector_box(person: Person) -> np.ndarray | None:
    """xyxy pixels of the box a face detector would give for ``person``'s face: the
    keypoint box (face keypoints, else head keypoints) mapped by ``TO_DETECTOR``.
    InstantFamily's masks are detector boxes + 25 % in training (Sec. 3.4), so inference
    face regions start from this box, not from the smaller keypoint box. None without
    face or head keypoints."""
    extent = _keypoint_extent(person)
    if extent is None:
        return None
    lo, hi, source = extent
    shift, width_scale, height_scale = TO_DETECTOR[source]
    size = hi - lo  # (2,) w, h
    centre = (lo + hi) / 2 + np.array([0.0, shift * size[1]])
    half = size / 2 * np.array([width_scale, height_scale])
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


def face_center(person: Person) -> np.ndarray | None:
    """(x, y) centre of the face box (see :func:`face_box`), or None."""
    box = face_box(person, margin=0.0)
    return None if box is None else (box[:2] + box[2:]) / 2


def circle_radius(box: np.ndarray) -> int:
    """Default slot-circle radius: a quarter of the face box's shorter side (xyxy px)."""
    return max(2, int(round(0.25 * min(box[2] - box[0], box[3] - box[1]))))


def slot_color(slot: int) -> tuple[int, int, int]:
    """RGB colour of stacking slot ``slot`` >= 0: ``SLOT_COLORS[slot]``, and beyond the table
    a generated one, so any number of identities can be drawn (InstantFamily Sec. 3.5, Fig. 6:
    more identities than trained slots). Generated colours step the hue by the golden ratio
    (successive slots far apart, deterministic) at saturation 0.75 and value 0.88: channels
    224 and 56, which are neither in OpenPose's palette nor in the table, so a generated
    colour is never a skeleton's or another slot's."""
    if slot < 0:
        raise ValueError(f"slot {slot} has no colour (slots start at 0)")
    if slot < len(SLOT_COLORS):
        return SLOT_COLORS[slot]
    rgb = colorsys.hsv_to_rgb((slot * GOLDEN_RATIO) % 1.0, 0.75, 0.88)
    return tuple(int(round(255 * c)) for c in rgb)


def draw_slot_circle(canvas: np.ndarray, box: np.ndarray, slot: int,
                     radius: int | None = None) -> None:
    """Filled ``slot_color(slot)`` circle at the centre of face ``box`` (xyxy px), in
    place; ``radius`` defaults to ``circle_radius(box)``."""
    centre = (box[:2] + box[2:]) / 2
    cv2.circle(canvas, tuple(int(round(v)) for v in centre),
               circle_radius(box) if radius is None else radius, slot_color(slot),
               thickness=-1)


def render_control_image(people: list[Person], hw: tuple[int, int],
                         circle_slots: list[int | None], radius: int | None = None,
                         out: np.ndarray | None = None) -> np.ndarray:
    """InstantFamily control image (Sec. 4.2): (H, W, 3) uint8 RGB on black.

    Args:
        people: everyone in the image; all get their OpenPose skeleton (body + face),
            drawn as controlnet_aux draws it (``ldm_ext.openpose_draw``).
        hw: (height, width) in pixels, the frame of the keypoints and of the image.
        circle_slots: per person, the stacking slot k of its face (a filled circle of
            ``slot_color(k)`` at the face centre) or None (skeleton only).
        radius: circle radius in pixels; default proportional to each face's size.
        out: a black, C-contiguous (H, W, 3) uint8 canvas to draw on (e.g. a slice of a
            batch tensor), instead of a new one.
    """
    if len(circle_slots) != len(people):
        raise ValueError(f"{len(circle_slots)} circle slots for {len(people)} people")
    canvas = np.zeros((*hw, 3), dtype=np.uint8) if out is None else out
    if canvas.shape != (*hw, 3) or not canvas.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous ({hw[0]}, {hw[1]}, 3) array")
    for person in people:
        draw_body(canvas, person.body, hw)
        if person.face is not None:
            draw_face(canvas, person.face, hw)
    for person, slot in zip(people, circle_slots):
        if slot is None:
            continue
        box = face_box(person, margin=0.0)
        if box is None:
            raise ValueError("a person selected for a circle has no face or head keypoints")
        draw_slot_circle(canvas, box, slot, radius)
    return canvas


def _face_template() -> np.ndarray:
    """OpenPose's 70 face points laid out in a unit face box (detector-box-like frame)."""
    def arc(cx, cy, ax, ay, angles):
        angles = np.asarray(angles, dtype=np.float64)
        return np.stack([cx + ax * np.cos(angles), cy - ay * np.sin(angles)], axis=1)

    eye_angles = np.pi - np.arange(6) * np.pi / 3  # outer/inner corner first, upper, lower
    parts = [
        arc(0.5, 0.40, 0.45, 0.60, np.linspace(np.pi, 2 * np.pi, 17)),  # 0-16 jaw, chin at 8
        arc(0.27, 0.30, 0.15, 0.05, np.linspace(np.pi, 0, 5)),  # 17-21 brow (image left)
        arc(0.73, 0.30, 0.15, 0.05, np.linspace(np.pi, 0, 5)),  # 22-26 brow (image right)
        np.stack([np.full(4, 0.5), np.linspace(0.40, 0.60, 4)], axis=1),  # 27-30 bridge, tip
        np.stack([np.linspace(0.42, 0.58, 5), [0.64, 0.65, 0.66, 0.65, 0.64]], axis=1),  # 31-35
        arc(0.30, 0.40, 0.08, 0.035, eye_angles),  # 36-41 eye (image left)
        arc(0.70, 0.40, 0.08, 0.035, eye_angles),  # 42-47 eye (image right)
        arc(0.5, 0.78, 0.16, 0.06, np.pi - np.arange(12) * np.pi / 6),  # 48-59 outer lip
        arc(0.5, 0.78, 0.11, 0.02, np.pi - np.arange(8) * np.pi / 4),  # 60-67 inner lip
        np.array([[0.30, 0.40], [0.70, 0.40]]),  # 68-69 pupils
    ]
    return np.concatenate(parts).astype(np.float32)


FACE_TEMPLATE = _face_template()  # (70, 2)
# Template points matching the detectors' five landmarks: pupils, nose tip, mouth corners.
FACE_TEMPLATE_5 = FACE_TEMPLATE[[68, 69, 30, 48, 54]]
# Head keypoints (index: offset along the eye axis, offset down the face) in eye
# distances from the eyes' midpoint; the neck follows the head's roll.
HEAD_LAYOUT = {1: (0.0, 2.2), 16: (-1.2, 0.3), 17: (1.2, 0.3)}
# Body keypoints (index: image x, image y offsets) in eye distances from the neck: an
# upright, frontal person with arms down.
BODY_LAYOUT = {2: (-3.0, 0.5), 3: (-3.4, 3.4), 4: (-3.5, 6.1), 5: (3.0, 0.5), 6: (3.4, 3.4),
               7: (3.5, 6.1), 8: (-1.7, 6.4), 9: (-1.8, 10.6), 10: (-1.8, 14.8),
               11: (1.7, 6.4), 12: (1.8, 10.6), 13: (1.8, 14.8)}


def _inside(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, 3) keypoints with confidence 1 inside the image, 0 outside."""
    xy = points[:, :2]
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    return np.concatenate([xy, ok[:, None]], axis=1).astype(np.float32)


def _body_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(18, 2) body keypoints from five face landmarks; the eye distance sets the scale."""
    left, right = landmarks[0], landmarks[1]
    eye_distance = max(float(np.linalg.norm(right - left)), 1e-3)
    along = (right - left) / eye_distance  # towards the image right
    down = np.array([-along[1], along[0]])
    body = np.zeros((len(BODY_PARTS), 2), np.float32)
    body[0], body[14], body[15] = landmarks[2], left, right
    for index, (a, b) in HEAD_LAYOUT.items():
        body[index] = (left + right) / 2 + eye_distance * (a * along + b * down)
    for index, offset in BODY_LAYOUT.items():
        body[index] = body[1] + eye_distance * np.asarray(offset)
    return body


def people_from_faces(boxes: np.ndarray, landmarks: np.ndarray,
                      image_hw: tuple[int, int]) -> list[Person]:
    """Fallback pose when no OpenPose model is available.

    Face keypoints: the 70-point template mapped by the similarity that fits its five
    points to the detected landmarks, kept inside the box enlarged by 25 %. Body: ears and
    neck in the face's frame (``HEAD_LAYOUT``), an upright frontal skeleton below the neck
    (``BODY_LAYOUT``), both scaled by the eye distance. Keypoints outside the image get
    confidence 0.

    Args:
        boxes: (F, 4) xyxy face boxes; landmarks: (F, 5, 2) as in ``Faces``;
        image_hw: (height, width).
    """
    height, width = image_hw
    people = []
    for box, points in zip(np.asarray(boxes, np.float32), np.asarray(landmarks, np.float32)):
        matrix = fit_similarity(FACE_TEMPLATE_5, points)
        centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * 1.25
        face = np.clip(apply_similarity(matrix, FACE_TEMPLATE), centre - half, centre + half)
        people.append(Person(body=_inside(_body_from_landmarks(points), height, width),
                             face=_inside(face, height, width)))
    return people


def pose_template(num_people: int, hw: tuple[int, int]) -> list[Person]:
    """``num_people`` frontal people standing side by side in equal columns, eyes at 30 %
    of the height; deterministic. ``hw`` is (height, width)."""
    if num_people < 1:
        raise ValueError("num_people must be >= 1")
    height, width = hw
    column = width / num_people
    eye_distance = min(column / 7.0, height / 10.0)
    side = eye_distance / float(FACE_TEMPLATE_5[1, 0] - FACE_TEMPLATE_5[0, 0])  # face box side
    boxes, landmarks = [], []
    for i in range(num_people):
        origin = np.array([(i + 0.5) * column - side / 2,
                           0.3 * height - FACE_TEMPLATE_5[0, 1] * side])  # box corner
        boxes.append(np.concatenate([origin, origin + side]))
        landmarks.append(origin + FACE_TEMPLATE_5 * side)
    return people_from_faces(np.stack(boxes), np.stack(landmarks), (height, width))


def fit_people(people: list[Person], source_hw: tuple[int, int],
               target_hw: tuple[int, int]) -> list[Person]:
    """People drawn on a (H, W) ``source_hw`` canvas moved onto ``target_hw``: scaled by
    one factor (the largest that fits) and centred, so a pose keeps its proportions on an
    image of another size or shape instead of being squashed."""
    scale = min(target_hw[0] / source_hw[0], target_hw[1] / source_hw[1])
    offset = np.array([target_hw[1] - source_hw[1] * scale,
                       target_hw[0] - source_hw[0] * scale], np.float32) / 2  # (x, y)

    def move(points: np.ndarray | None) -> np.ndarray | None:
        if points is None:
            return None
        moved = points.copy()
        moved[:, :2] = points[:, :2] * scale + offset
        return moved

    return [Person(body=move(p.body), face=move(p.face)) for p in people]


def save_people(people: list[Person], path: str | Path,
                hw: tuple[int, int] | None = None) -> None:
    """Write idforge's pose JSON: {"people": [{"body": [[x, y, c], ...], "face": ... | null}],
    "width": W, "height": H} (width/height null when ``hw`` = (height, width) is not given).
    The size keys are named, so files stay readable whatever order code uses."""
    height, width = hw if hw is not None else (None, None)
    records = [{"body": p.body.tolist(), "face": None if p.face is None else p.face.tolist()}
               for p in people]
    Path(path).write_text(json.dumps({"people": records, "width": width, "height": height}))


def person_from_pose(pose, width: int, height: int) -> Person:
    """Person from a controlnet_aux ``PoseResult`` (normalised coordinates)."""
    body = np.zeros((len(BODY_PARTS), 3), np.float32)
    for index, point in enumerate(pose.body.keypoints):
        if point is not None:
            body[index] = (point.x * width, point.y * height, point.score)
    face = None
    if pose.face is not None:
        face = np.array([(p.x * width, p.y * height, 1.0) if p.x >= 0 and p.y >= 0 else (0, 0, 0)
                         for p in pose.face], dtype=np.float32)
    return Person(body=body, face=face)


class OpenPoseEstimator:
    """OpenPose body + face keypoints through controlnet_aux's ``OpenposeDetector``.

    Args:
        name_or_path: local folder in the ``lllyasviel/Annotators`` layout
            (``ANNOTATOR_FILES``) or a hub id (default lllyasviel/Annotators).
        device: torch device.
        local_files_only: never contact the hub.

    Missing weights raise ``PoseModelMissing`` with the download command.
    """

    def __init__(self, name_or_path: str = DEFAULT_POSE_WEIGHTS, device: str = "cpu",
                 local_files_only: bool = False) -> None:
        folder = Path(name_or_path)
        missing = [f for f in ANNOTATOR_FILES if not (folder / f).is_file()]
        if folder.is_dir() and missing:
            raise PoseModelMissing(f"OpenPose weights {', '.join(missing)} not in {folder}: "
                                   f"download them with `{download_command(str(folder))}`")
        from controlnet_aux import OpenposeDetector

        try:
            detector = OpenposeDetector.from_pretrained(name_or_path,
                                                        local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            raise PoseModelMissing(
                f"OpenPose weights ({', '.join(ANNOTATOR_FILES)}) not found for "
                f"'{name_or_path}' (not a folder, nor in the Hugging Face cache): download "
                f"them with `{download_command()}` and name that folder with --pose-weights "
                f"DIR ({error})") from error
        self.detector = detector.to(device)

    def __call__(self, image: PIL.Image.Image | np.ndarray) -> list[Person]:
        """People (body + face keypoints, pixels) in an HWC uint8 RGB image."""
        rgb = to_rgb_array(image)
        height, width = rgb.shape[:2]
        poses = self.detector.detect_poses(rgb, include_hand=False, include_face=True)
        return [person_from_pose(pose, width, height) for pose in poses]
