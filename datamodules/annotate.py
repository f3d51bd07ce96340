"""Annotation stages of ``datamodules.prepare``: faces, pose, masks, character crop.

Each stage has the real model as default and a named fallback when its weights are absent
offline; the name of whatever ran is stored in the sample (``face_model``, ``pose_model``,
``models``), so a shard says how it was made.

- faces: a ``FaceDetector`` of ``ldm_ext.face`` (default MTCNN), filtered by score and size;
- pose: OpenPose through controlnet_aux when its weights are local, else
  ``people_from_faces`` (keypoints from the detector's landmarks), name ``faces-fallback``;
- masks: per face, the box enlarged by 25 % (InstantFamily's face region, Sec. 3.5) and a
  segmentation from a ``Segmenter``: the SegFormer face parser of
  ``datamodules.face_parsing`` when its weights are local, else the ellipse inscribed in
  the detector box (``ellipse``);
- character: the main person on white (StoryMaker), from the pose skeleton's hull and the
  face ellipse (``pose-hull``) when no person segmentation model is configured.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import cv2
import numpy as np
import torch

from datamodules.face_parsing import DEFAULT_FACE_PARSER, FaceParserMissing, FaceParsingSegmenter
from datamodules.schema import CROP_SIZE, MASK_BOX, MASK_SEG, Sample
from ldm_ext.face import FaceModelMissing, Faces, build_face_detector
from ldm_ext.face.align import tensor_to_uint8
from ldm_ext.pose import (OpenPoseEstimator, Person, PoseModelMissing, face_center,
                          people_from_faces)

log = logging.getLogger(__name__)
FACE_MARGIN = 0.25  # face region = detector box enlarged by 25 % (InstantFamily Sec. 3.5)


class Rejected(Exception):
    """An input that ``prepare`` leaves out; ``reason`` is the key of ``stats.json``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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


def face_masks(image: np.ndarray, boxes: np.ndarray, segmenter: Segmenter) -> np.ndarray:
    """(F, H, W) uint8 bit flags: ``MASK_BOX`` (box + 25 %) | ``MASK_SEG`` (segmenter)."""
    masks = segmenter(image, boxes).astype(np.uint8) * MASK_SEG
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


def character_crop(image: np.ndarray, person: Person, box: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8: the person (skeleton hull dilated by half a face, plus the face
    ellipse enlarged by 25 %) on white, cropped to its extent."""
    mask = np.zeros(image.shape[:2], np.uint8)
    face = enlarged(box[None], FACE_MARGIN, image.shape[:2])[0]
    centre, half = (face[:2] + face[2:]) / 2, (face[2:] - face[:2]) / 2
    cv2.ellipse(mask, tuple(int(v) for v in centre), tuple(max(1, int(v)) for v in half),
                0, 0, 360, 1, thickness=-1)
    points = person.body[person.body[:, 2] > 0, :2]
    if len(points) >= 3:
        cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 1)
        radius = max(1, int(half.min()))
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                          (2 * radius + 1, 2 * radius + 1)))
    ys, xs = np.nonzero(mask)
    out = np.where(mask[..., None] > 0, image, 255).astype(np.uint8)
    return np.ascontiguousarray(out[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


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
        filters: face and image filters.
        detector_kwargs: extra detector arguments (the score filter is ``filters``').
    """

    detector: str = "mtcnn"
    pose: str = "auto"
    segmenter: str = "auto"
    parser: str = DEFAULT_FACE_PARSER
    filters: Filters = field(default_factory=Filters)
    detector_kwargs: dict = field(default_factory=dict)
    _models: dict = field(default_factory=dict, repr=False)

    def face_detector(self):
        if "faces" not in self._models:
            kwargs = {"min_score": 0.0, **self.detector_kwargs}
            self._models["faces"] = build_face_detector(self.detector, **kwargs)
        return self._models["faces"]

    def pose_estimator(self) -> Callable | None:
        """OpenPose, or None for the landmark fallback (logged once)."""
        if "pose" not in self._models:
            self._models["pose"] = None
            if self.pose != "faces":
                try:
                    self._models["pose"] = OpenPoseEstimator(local_files_only=True)
                except (PoseModelMissing, FaceModelMissing) as err:
                    if self.pose == "openpose":
                        raise
                    log.warning("OpenPose unavailable, pose from face landmarks: %s", err)
        return self._models["pose"]

    def face_segmenter(self) -> Segmenter:
        """The face parser, or the ellipse fallback (logged once)."""
        if "segmenter" not in self._models:
            self._models["segmenter"] = EllipseSegmenter()
            if self.segmenter != "ellipse":
                try:
                    self._models["segmenter"] = FaceParsingSegmenter(self.parser,
                                                                     local_files_only=True)
                except FaceParserMissing as err:
                    if self.segmenter == "face-parsing":
                        raise
                    log.warning("face parser unavailable, ellipse masks: %s", err)
        return self._models["segmenter"]

    def faces(self, image: np.ndarray) -> Faces:
        """Filtered detections, largest first."""
        with torch.inference_mode():
            return self.filters.faces(self.face_detector().detect(image))

    def people(self, image: np.ndarray, faces: Faces) -> tuple[list[Person], np.ndarray, str]:
        """(people, face_person, pose model name)."""
        estimator = self.pose_estimator()
        if estimator is None:
            people = people_from_faces(faces.boxes, faces.landmarks, image.shape[:2])
            return people, np.arange(len(faces), dtype=np.int64), "faces-fallback"
        people = estimator(image)
        return people, link_faces(faces.boxes, people), "openpose"

    def __call__(self, key: str, image: np.ndarray, caption: str | None) -> Sample:
        """The annotated sample of one RGB image; ``Rejected`` when filtered out.

        ``caption`` None: "a photo of <n> people" from the face count; "" is rejected.
        """
        if caption is not None and not caption.strip():
            raise Rejected("empty_caption")
        faces = self.faces(image)
        self.filters.check_count(len(faces))
        if caption is None:
            caption = "a photo of one person" if len(faces) == 1 else \
                f"a photo of {len(faces)} people"
        people, face_person, pose_model = self.people(image, faces)
        segmenter = self.face_segmenter()
        sample = Sample(key=key, image=image, caption=caption, boxes=faces.boxes,
                        landmarks=faces.landmarks, scores=faces.scores,
                        crops=crops_uint8(faces), people=people, face_person=face_person,
                        face_model=self.detector, pose_model=pose_model,
                        masks=face_masks(image, faces.boxes, segmenter))
        sample.models = {"masks": f"box+25%|{segmenter.name}"}
        if len(faces) and face_person[0] >= 0:
            sample.character = character_crop(image, people[face_person[0]], faces.boxes[0])
            sample.models["character"] = f"pose-hull({pose_model})"
        return sample
