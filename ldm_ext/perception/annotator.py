"""Annotation stages of ``datamodules.prepare``: faces, pose, masks, characters.

Each stage has the real model as default and a named fallback when its weights are absent
offline; the name of whatever ran is stored in the sample (``face_model``, ``pose_model``,
``models``), so a shard says how it was made.

- faces: a ``FaceDetector`` of ``ldm_ext.face`` (default MTCNN), filtered by score and size;
- pose: OpenPose through controlnet_aux when its weights are local, else
  ``people_from_faces`` (keypoints from the detector's landmarks), name ``faces-fallback``;
- masks: per face, the box enlarged by 25 % (InstantFamily's face region, Sec. 3.5), a
  segmentation from a ``Segmenter``: the SegFormer face parser of ``prepare.parsing`` when
  its weights are local, else the ellipse inscribed in the detector box (``ellipse``), and
  the face's character (StoryMaker's mask): the human parser split by pose
  (``prepare.characters``) when its weights are local, else the pose hull (``pose-hull``);
- character: the main face's character on white (StoryMaker's reference crop).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import cv2
import numpy as np
import torch

from datamodules.prepare.characters import HullCharacters, ParsedCharacters
from ldm_ext.perception.characters import character_on_white
from datamodules.prepare.rejected import Rejected  # noqa: F401 (raised here, re-exported)
from datamodules.prepare.parsing import (DEFAULT_FACE_PARSER, DEFAULT_HUMAN_PARSER,
                                         FaceParsingSegmenter, HumanParser, ParserMissing)
from datamodules.schema import CROP_SIZE, FACE_MARGIN, MASK_BOX, MASK_CHAR, MASK_SEG, Sample
from ldm_ext.face import FaceModelMissing, Faces, build_face_detector, detect_batch
from ldm_ext.face.align import tensor_to_uint8
from ldm_ext.pose import (DEFAULT_POSE_WEIGHTS, OpenPoseEstimator, Person, PoseModelMissing,
                          face_center, people_from_faces)

log = logging.getLogger(__name__)


@dataclass
class Filters:
    """Which detections and images are kept.

    Args:
        min_faces, max_faces: kept images have this many faces (after the face filters).
        min_face_size: faces whose box's shorter side is below this (pixels) are dropped.
        min_score: faces with a lower detector score are dropped.
    """

    min_faces: int = 1
    max_faces: int = 8
    min_face_size: float = 32.0
    min_score: float = 0.95

    def faces(self, faces: Faces) -> Faces:
        """The detections that pass the score and size filters (largest first, as given)."""
        sides = (faces.boxes[:, 2:] - faces.boxes[:, :2]).min(axis=1) if len(faces) else \
            np.zeros(0)
        return faces.select((faces.scores >= self.min_score) & (sides >= self.min_face_size))

    def check_count(self, count: int) -> None:
        if count < self.min_faces:
            raise Rejected("too_few_faces", f"{count} < {self.min_faces}")
        if count > self.max_faces:
            raise Rejected("too_many_faces", f"{count} > {self.max_faces}")


class Segmenter(Protocol):
    """Face segmentation: ``(image (H, W, 3), boxes (F, 4)) -> (F, H, W) bool``."""

    name: str

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray: ...


class Characters(Protocol):
    """Character masks: ``(image, boxes (F, 4), people, face_person) -> (F, H, W) bool``."""

    name: str

    def __call__(self, image: np.ndarray, boxes: np.ndarray, people: list[Person],
                 face_person: np.ndarray) -> np.ndarray: ...


class EllipseSegmenter:
    """Fallback face segmentation: the ellipse inscribed in each detector box."""

    name = "ellipse"

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        masks = np.zeros((len(boxes), *image.shape[:2]), np.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes):
            centre = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
            axes = (max(1, int(round((x1 - x0) / 2))), max(1, int(round((y1 - y0) / 2))))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
        return masks.astype(bool)


def enlarged(boxes: np.ndarray, margin: float, hw: tuple[int, int]) -> np.ndarray:
    """(F, 4) boxes with width and height x (1 + margin) about their centres, clipped."""
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
    out = np.concatenate([centre - half * (1 + margin), centre + half * (1 + margin)], axis=1)
    return np.clip(out, 0, [hw[1], hw[0], hw[1], hw[0]]).astype(np.float32)


def face_masks(image: np.ndarray, boxes: np.ndarray, segmenter: Segmenter,
               characters: np.ndarray) -> np.ndarray:
    """(F, H, W) uint8 bit flags: ``MASK_BOX`` (box + 25 %) | ``MASK_SEG`` (segmenter) |
    ``MASK_CHAR`` (``characters``, (F, H, W) bool)."""
    masks = segmenter(image, boxes).astype(np.uint8) * MASK_SEG
    masks |= characters.astype(np.uint8) * MASK_CHAR
    for mask, (x0, y0, x1, y1) in zip(masks, enlarged(boxes, FACE_MARGIN, image.shape[:2])):
        mask[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] |= MASK_BOX
    return masks


def link_faces(boxes: np.ndarray, people: list[Person]) -> np.ndarray:
    """(F,) person of each face (-1: none): the unclaimed person whose face centre lies in
    the face box enlarged by 25 %, nearest the box centre; faces are taken largest first."""
    links, taken = np.full(len(boxes), -1, np.int64), set()
    centres = [face_center(p) for p in people]
    regions = enlarged(np.asarray(boxes, np.float32).reshape(-1, 4), FACE_MARGIN, (1 << 30,) * 2)
    for f, (x0, y0, x1, y1) in enumerate(regions):
        mid = (boxes[f, :2] + boxes[f, 2:]) / 2
        inside = [(float(np.linalg.norm(c - mid)), p) for p, c in enumerate(centres)
                  if c is not None and p not in taken and x0 <= c[0] <= x1 and y0 <= c[1] <= y1]
        if inside:
            links[f] = min(inside)[1]
            taken.add(links[f])
    return links


def crops_uint8(faces: Faces) -> np.ndarray:
    """(F, 3, 160, 160) uint8 crops of the schema from the detector's [-1, 1] crops."""
    if not len(faces):
        return np.zeros((0, 3, CROP_SIZE, CROP_SIZE), np.uint8)
    return tensor_to_uint8(faces.crops, CROP_SIZE).transpose(0, 3, 1, 2).copy()


@dataclass
class Annotator:
    """All stages for one process (models are built on first use).

    Args:
        detector: face detector name (``ldm_ext.face.build_face_detector``).
        pose: ``auto`` (OpenPose if its weights are local, else the fallback), ``openpose``
            (required) or ``faces`` (always the fallback).
        segmenter: ``auto`` (the face parser if its weights are local, else the ellipse),
            ``face-parsing`` (required) or ``ellipse``.
        parser: the face parser's hub id or local folder.
        characters: ``auto`` (the human parser if its weights are local, else the pose
            hull), ``human-parsing`` (required) or ``pose-hull``.
        human_parser: the human parser's hub id or local folder.
        pose_weights: OpenPose's weights: hub id or local folder in the
            ``lllyasviel/Annotators`` layout (``ldm_ext.pose.ANNOTATOR_FILES``).
        filters: face and image filters.
        detector_kwargs: extra detector arguments (the score filter is ``filters``').
        device: torch device of the models (``cuda`` on a GPU worker of the Ray engine).
    """

    detector: str = "mtcnn"
    pose: str = "auto"
    segmenter: str = "auto"
    parser: str = DEFAULT_FACE_PARSER
    characters: str = "auto"
    human_parser: str = DEFAULT_HUMAN_PARSER
    pose_weights: str = DEFAULT_POSE_WEIGHTS
    filters: Filters = field(default_factory=Filters)
    detector_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    _models: dict = field(default_factory=dict, repr=False)

    def face_detector(self):
        if "faces" not in self._models:
            kwargs = {"min_score": 0.0, **self.detector_kwargs}
            if self.device != "cpu":  # dlib runs on the CPU only and takes no device
                kwargs["device"] = self.device
            self._models["faces"] = build_face_detector(self.detector, **kwargs)
        return self._models["faces"]

    def _stage(self, key: str, mode: str, modes: tuple[str, str], build: Callable,
               fallback, missing: tuple[type[Exception], ...], warning: str):
        """A stage's model, built on first use. ``modes`` = (required, off): ``off`` always
        gives ``fallback``; ``required`` builds the real model or raises; any other mode
        (``auto``) falls back when ``build`` raises ``missing``, with ``warning`` logged."""
        if key not in self._models:
            required, off = modes
            self._models[key] = fallback
            if mode != off:
                try:
                    self._models[key] = build()
                except missing as err:
                    if mode == required:
                        raise
                    log.warning("%s: %s", warning, err)
        return self._models[key]

    def pose_estimator(self) -> Callable | None:
        """OpenPose, or None for the landmark fallback."""
        return self._stage("pose", self.pose, ("openpose", "faces"),
                           lambda: OpenPoseEstimator(self.pose_weights,
                                                     device=self.device,
                                                     local_files_only=True), None,
                           (PoseModelMissing, FaceModelMissing),
                           "OpenPose unavailable, pose from face landmarks")

    def face_segmenter(self) -> Segmenter:
        """The face parser, or the ellipse fallback."""
        return self._stage("segmenter", self.segmenter, ("face-parsing", "ellipse"),
                           lambda: FaceParsingSegmenter(self.parser, self.device,
                                                        local_files_only=True),
                           EllipseSegmenter(), (ParserMissing,),
                           "face parser unavailable, ellipse masks")

    def character_segmenter(self) -> Characters:
        """Human parsing split by pose, or the pose-hull fallback."""
        return self._stage("characters", self.characters, ("human-parsing", "pose-hull"),
                           lambda: ParsedCharacters(HumanParser(self.human_parser, self.device,
                                                                local_files_only=True)),
                           HullCharacters(), (ParserMissing,),
                           "human parser unavailable, pose-hull characters")

    def faces(self, image: np.ndarray) -> Faces:
        """Filtered detections, largest first."""
        with torch.inference_mode():
            return self.filters.faces(self.face_detector().detect(image))

    def faces_batch(self, images: list[np.ndarray]) -> list[Faces]:
        """``faces`` of each image, detected in one batch (``ldm_ext.face.detect_batch``:
        MTCNN runs equal-size images together; other detectors one at a time)."""
        with torch.inference_mode():
            return [self.filters.faces(found)
                    for found in detect_batch(self.face_detector(), images)]

    def people(self, image: np.ndarray, faces: Faces) -> tuple[list[Person], np.ndarray, str]:
        """(people, face_person, pose model name)."""
        estimator = self.pose_estimator()
        if estimator is None:
            people = people_from_faces(faces.boxes, faces.landmarks, image.shape[:2])
            return people, np.arange(len(faces), dtype=np.int64), "faces-fallback"
        people = estimator(image)
        return people, link_faces(faces.boxes, people), "openpose"

    def __call__(self, key: str, image: np.ndarray, caption: str | None,
                 faces: Faces | None = None) -> Sample:
        """The annotated sample of one RGB image; ``Rejected`` when filtered out.

        ``caption`` None: "a photo of <n> people" from the face count; "" is rejected.
        ``faces``: the image's ``faces`` when already detected (``faces_batch``).
        """
        if caption is not None and not caption.strip():
            raise Rejected("empty_caption")
        faces = self.faces(image) if faces is None else faces
        self.filters.check_count(len(faces))
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
