"""Data types and the two protocols every face backend implements.

A *detector* turns an RGB image into :class:`Faces` (boxes, five landmarks, scores and
aligned crops); an *encoder* turns crops into :class:`FaceFeatures` (a global embedding and,
where the network has them, a local feature map and shallow features). InstantFamily uses
global + local tokens (Sec. 3.3), PortraitBooth shallow features and a differentiable
identity loss (Eq. 4-6), StoryMaker the ArcFace embedding, evaluation the FastComposer
protocol (MTCNN + FaceNet).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

from ldm_ext.cli import UserError

if TYPE_CHECKING:
    import PIL.Image


class FaceModelMissing(UserError, RuntimeError):
    """Weights of a face/pose model are not available locally (and cannot be fetched).

    The message names the model, where it was expected and how to provide it.
    """


@dataclass
class Faces:
    """Detections in one image, sorted largest box first.

    Attributes:
        boxes: (F, 4) float32 xyxy in pixels, as detected: a face cut by the image edge
            keeps its whole box, which may overhang the image.
        landmarks: (F, 5, 2) float32: left eye, right eye, nose, mouth left, mouth right,
            "left" meaning the smaller image x (the subject's right for a frontal face).
        scores: (F,) float32 detector confidences.
        crops: (F, 3, S, S) float32 in [-1, 1], crops at the detector's ``crop_size``.
    """

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    crops: torch.Tensor

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 5, 2)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        counts = {len(self.boxes), len(self.landmarks), len(self.scores), len(self.crops)}
        if len(counts) != 1:
            raise ValueError(f"Faces fields disagree on the number of faces: {counts}")

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, idx: int | slice | list[int] | np.ndarray) -> Faces:
        """Faces ``idx`` (int, slice, index list or boolean mask), always keeping the F axis."""
        index = np.atleast_1d(np.arange(len(self))[idx])
        return Faces(
            boxes=self.boxes[index],
            landmarks=self.landmarks[index],
            scores=self.scores[index],
            crops=self.crops[torch.as_tensor(index, dtype=torch.long)],
        )

    @classmethod
    def empty(cls, crop_size: int) -> Faces:
        """No detection: every field with F = 0."""
        return cls(np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0),
                   torch.zeros(0, 3, crop_size, crop_size))


@dataclass
class FaceFeatures:
    """Features of a batch of face crops.

    Attributes:
        global_: (B, d_global) L2-normalised identity embedding.
        local: (B, d_local, L, L) last convolutional feature map, or None.
        shallow: (B, d_shallow) globally pooled early-block features, or None.
    """

    global_: torch.Tensor
    local: torch.Tensor | None = None
    shallow: torch.Tensor | None = None


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an HWC uint8 RGB image (or a PIL image)."""

    name: str
    crop_size: int

    def detect(self, image: PIL.Image.Image | np.ndarray) -> Faces: ...


@runtime_checkable
class FaceEncoder(Protocol):
    """Encodes crops (B, 3, S, S) in [-1, 1]; resizes to ``input_size`` itself.

    Dimensions a backend does not provide are 0 (and the feature is None).
    """

    name: str
    input_size: int
    global_dim: int
    local_dim: int
    local_size: int
    shallow_dim: int
    differentiable: bool

    def encode(self, crops: torch.Tensor) -> FaceFeatures: ...
