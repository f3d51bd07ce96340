"""The perception stages of one process: faces, pose, face masks and character masks.

Each stage has the real model as default and a named fallback when its weights are absent
offline, and a name that says which ran. Data preparation stores those names with each
sample, so a shard says how it was made; StoryMaker's pipeline cuts characters out of a
reference photo with the same stages.

- faces: a ``FaceDetector`` of ``ldm_ext.face`` (default MTCNN), filtered by score and size;
- pose: OpenPose through controlnet_aux when its weights are local, else
  ``people_from_faces`` (keypoints from the detector's landmarks), name ``faces-fallback``;
- face masks: the SegFormer face parser (``parsing``) when its weights are local, else the
  ellipse inscribed in the detector box (``segmenters.EllipseSegmenter``);
- character masks (StoryMaker's): the human parser split by pose (``character_masks``) when
  its weights are local, else the pose hull (``pose-hull``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ldm_ext.face import FaceModelMissing, Faces, build_face_detector, detect_batch
from ldm_ext.perception.character_masks import Characters, HullCharacters, ParsedCharacters
from ldm_ext.perception.face_region import FACE_MARGIN, enlarged
from ldm_ext.perception.parsing import (DEFAULT_FACE_PARSER, DEFAULT_HUMAN_PARSER,
                                        FaceParsingSegmenter, HumanParser, ParserMissing)
from ldm_ext.perception.pose import (DEFAULT_POSE_WEIGHTS, OpenPoseEstimator, Person,
                                     PoseModelMissing, face_center, people_from_faces)
from ldm_ext.perception.segmenters import EllipseSegmenter, Segmenter

log = logging.getLogger(__name__)


@dataclass
class Filters:
    """Which detections and images are kept.

    Args:
        min_faces, max_faces: kept images have this many faces (after the face filters;
            data preparation rejects the others).
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
            ``lllyasviel/Annotators`` layout (``pose.ANNOTATOR_FILES``).
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
