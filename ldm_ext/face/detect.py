"""Face detectors behind the :class:`~ldm_ext.face.types.FaceDetector` protocol.

* ``mtcnn``: facenet-pytorch MTCNN (weights ship with the package). Crops are the
  FastComposer protocol's: the box (plus ``margin``) resized to 160x160, as
  ``MTCNN.forward`` extracts them (docs/benchmark.md "Scoring").
* ``insightface``: RetinaFace/SCRFD of insightface's ``buffalo_l`` pack; crops aligned
  to the ArcFace template with ``insightface.utils.face_align.norm_crop`` (112x112).
* ``dlib``: HOG detector + 5-point shape predictor of ``face_recognition_models``; crops
  by ``dlib.get_face_chip`` (the alignment dlib's recognition model expects).

Boxes are returned as the detector regresses them, not clipped: a face cut by the image
edge keeps its whole box, which may overhang the image. InstantFamily's face region is
that box enlarged by 25 % and only then clipped (``ldm_ext.perception.face_region``,
``ldm_ext.attention.masks``); clipping first would shrink and shift it.
"""
from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np
import PIL.Image
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import extract_face

from .align import complete_five_points, crops_to_tensor, to_rgb_array
from .types import FaceDetector, FaceModelMissing, Faces


def dlib_model_path(filename: str) -> str:
    """Path of a ``face_recognition_models`` file, found without importing the package
    (its ``__init__`` needs ``pkg_resources``, which recent setuptools dropped)."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = os.path.join(location, "models", filename)
        if os.path.exists(path):
            return path
    raise FaceModelMissing(
        f"dlib model '{filename}' not found (searched {locations or 'nothing'}): "
        "install it with `pip install face-recognition-models` (extra idforge[face]).")


def largest_first(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices ordering faces by box area, descending; ties by score, descending."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.lexsort((-scores, -areas))


class MTCNNDetector:
    """MTCNN detector with the FastComposer evaluation settings.

    Args:
        min_score: keep faces whose MTCNN probability is >= this (0.0 keeps everything
            MTCNN's own thresholds [0.6, 0.7, 0.7] pass, i.e. the protocol exactly).
        crop_size: side of the output crops (160 for FaceNet).
        margin: facenet-pytorch margin in pixels of the final crop.
        min_face_size: smallest face MTCNN searches for.
        device: torch device of the three networks.
        batch_pixels: most pixels of one batched MTCNN call (``detect_batch``); default: no
            limit on a GPU, 2**20 (four 512x512 frames) on the CPU, where larger batches
            ran slower than one image at a time (measured here on one thread, 512x512
            frames: 16 per call 0.97x the images/s of one per call, 2 or 4 per call 1.04x;
            the networks' activations outgrow the caches).
    """

    name = "mtcnn"

    def __init__(self, min_score: float = 0.9, crop_size: int = 160, margin: int = 0,
                 min_face_size: int = 20, device: str = "cpu",
                 batch_pixels: int | None = None) -> None:
        self.min_score = min_score
        self.crop_size = crop_size
        self.margin = margin
        on_cpu = torch.device(device).type == "cpu"
        self.batch_pixels = batch_pixels or (1 << 20 if on_cpu else None)
        self.mtcnn = MTCNN(image_size=crop_size, margin=margin, min_face_size=min_face_size,
                           thresholds=[0.6, 0.7, 0.7], factor=0.709, post_process=True,
                           keep_all=True, device=torch.device(device))
        if on_cpu:  # PNet's max_pool2d (~40 % of a CPU detection) runs 3.5x faster in NHWC
            self.mtcnn.to(memory_format=torch.channels_last)

    def detect(self, image: PIL.Image.Image | np.ndarray) -> Faces:
        """Faces in one HWC uint8 RGB image; boxes as MTCNN gives them (see the module
        doc), crops clipped to the image by ``extract_face``."""
        pil = PIL.Image.fromarray(to_rgb_array(image))
        return self._faces(pil, *self.mtcnn.detect(pil, landmarks=True))

    def detect_batch(self, images: list[PIL.Image.Image | np.ndarray]) -> list[Faces]:
        """Faces in each image, in input order. facenet-pytorch runs a batch through its
        networks only when the images have one size, so the images go by size: MTCNN calls
        of one size each, of at most ``batch_pixels`` (a clip's frames share one size;
        LAION photos mostly differ)."""
        pils = [PIL.Image.fromarray(to_rgb_array(image)) for image in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, pil in enumerate(pils):
            by_size.setdefault(pil.size, []).append(i)
        found: list[Faces | None] = [None] * len(pils)
        for (width, height), indices in by_size.items():
            limit = self.batch_pixels or width * height * len(indices)
            step = max(1, limit // (width * height))
            for part in (indices[k:k + step] for k in range(0, len(indices), step)):
                detections = self.mtcnn.detect([pils[i] for i in part], landmarks=True)
                for i, boxes, probs, points in zip(part, *detections):
                    found[i] = self._faces(pils[i], boxes, probs, points)
        return found

    def _faces(self, pil: PIL.Image.Image, boxes: np.ndarray | None, probs: np.ndarray,
               points: np.ndarray | None) -> Faces:
        """``Faces`` of one image from MTCNN's (boxes (F, 4), probs (F,), points (F, 5, 2)),
        boxes None when it found none: the ``min_score`` filter, largest first, crops."""
        if boxes is None:
            return Faces.empty(self.crop_size)
        boxes = boxes.astype(np.float32)
        scores = probs.astype(np.float32)
        landmarks = points.astype(np.float32)
        keep = np.flatnonzero(scores >= self.min_score)
        order = keep[largest_first(boxes[keep], scores[keep])]
        crops = [np.asarray(extract_face(pil, box, self.crop_size, self.margin))
                 .transpose(1, 2, 0).astype(np.uint8) for box in boxes[order]]  # (S, S, 3)
        return Faces(boxes[order], landmarks[order], scores[order],
                     crops_to_tensor(crops, self.crop_size))


class InsightFaceDetector:
    """insightface ``FaceAnalysis`` detection (RetinaFace/SCRFD) with ArcFace-aligned crops.

    Args:
        min_score: detection threshold (``det_thresh``).
        crop_size: aligned crop side, a multiple of 112 or 128 (``norm_crop``).
        pack: model pack; its ``*.onnx`` files must be in ``<root>/models/<pack>/``.
        root: insightface root folder.
        det_size: detector input side.
        device: "cpu" or "cuda" (onnxruntime execution provider).
    """

    name = "insightface"

    def __init__(self, min_score: float = 0.5, crop_size: int = 112, pack: str = "buffalo_l",
                 root: str = "~/.insightface", det_size: int = 640, device: str = "cpu") -> None:
        from insightface.app import FaceAnalysis

        model_dir = os.path.join(os.path.expanduser(root), "models", pack)
        if not glob.glob(os.path.join(model_dir, "*.onnx")):
            raise FaceModelMissing(
                f"insightface model pack '{pack}' not found: expected its .onnx files in "
                f"{model_dir}. Download {pack}.zip from the insightface model zoo "
                "(github.com/deepinsight/insightface/releases) and unzip it there, or pass "
                f"root=<folder containing models/{pack}>.")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        self.min_score = min_score
        self.crop_size = crop_size
        self.app = FaceAnalysis(name=pack, root=root, allowed_modules=["detection"],
                                providers=providers)
        self.app.prepare(ctx_id=0 if device.startswith("cuda") else -1,
                         det_thresh=min_score, det_size=(det_size, det_size))

    def detect(self, image: PIL.Image.Image | np.ndarray) -> Faces:
        """Faces in one HWC uint8 RGB image (insightface itself works on BGR)."""
        from insightface.utils.face_align import norm_crop

        rgb = to_rgb_array(image)
        found = [f for f in self.app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
                 if f.det_score >= self.min_score]
        if not found:
            return Faces.empty(self.crop_size)
        boxes = np.stack([f.bbox for f in found]).astype(np.float32)
        landmarks = np.stack([f.kps for f in found]).astype(np.float32)
        scores = np.array([f.det_score for f in found], dtype=np.float32)
        order = largest_first(boxes, scores)
        crops = [norm_crop(rgb, landmarks[i], image_size=self.crop_size) for i in order]
        return Faces(boxes[order], landmarks[order], scores[order],
                     crops_to_tensor(crops, self.crop_size))


class DlibDetector:
    """dlib HOG face detector, 5-point landmarks and ``get_face_chip`` crops.

    The 5-point model gives eye corners and the nose base; mouth corners are estimated
    from them (:func:`~ldm_ext.face.align.complete_five_points`).

    Args:
        min_score: HOG SVM score threshold (dlib's default 0.0).
        crop_size: chip side (150 is what dlib's recognition model expects).
        upsample: image upsamplings before detection (finds smaller faces, slower).
        padding: chip padding around the face, as dlib's recognition model expects (0.25).
    """

    name = "dlib"

    def __init__(self, min_score: float = 0.0, crop_size: int = 150, upsample: int = 1,
                 padding: float = 0.25) -> None:
        import dlib

        self.min_score = min_score
        self.crop_size = crop_size
        self.upsample = upsample
        self.padding = padding
        self.detector = dlib.get_frontal_face_detector()
        landmarks_file = dlib_model_path("shape_predictor_5_face_landmarks.dat")
        self.predictor = dlib.shape_predictor(landmarks_file)

    def detect(self, image: PIL.Image.Image | np.ndarray) -> Faces:
        """Faces in one HWC uint8 RGB image."""
        import dlib

        rgb = to_rgb_array(image)
        rects, scores, _ = self.detector.run(rgb, self.upsample, self.min_score)
        if len(rects) == 0:
            return Faces.empty(self.crop_size)
        shapes = [self.predictor(rgb, rect) for rect in rects]
        corners = [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects]  # inclusive
        boxes = np.array(corners, dtype=np.float32)
        landmarks = np.stack([_five_points(shape) for shape in shapes])
        scores = np.asarray(scores, dtype=np.float32)
        order = largest_first(boxes, scores)
        crops = [dlib.get_face_chip(rgb, shapes[i], size=self.crop_size, padding=self.padding)
                 for i in order]
        return Faces(boxes[order], landmarks[order], scores[order],
                     crops_to_tensor(crops, self.crop_size))


def _five_points(shape) -> np.ndarray:
    """(5, 2) landmarks from dlib's 5-point shape: two corners per eye + nose base."""
    parts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)  # (5, 2)
    eyes = sorted([parts[0:2].mean(0), parts[2:4].mean(0)], key=lambda p: p[0])
    return complete_five_points(eyes[0], eyes[1], parts[4])


DETECTORS = {"mtcnn": MTCNNDetector, "insightface": InsightFaceDetector, "dlib": DlibDetector}


def detect_batch(detector: FaceDetector, images: list[PIL.Image.Image | np.ndarray]
                 ) -> list[Faces]:
    """``detector``'s faces in each image: its own ``detect_batch`` where it has one (MTCNN),
    else one ``detect`` per image."""
    batched = getattr(detector, "detect_batch", None)
    return batched(images) if batched else [detector.detect(image) for image in images]


def build_face_detector(name: str, **kwargs) -> FaceDetector:
    """Detector by name ("mtcnn" | "insightface" | "dlib"); kwargs go to its constructor."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector '{name}', choose from {sorted(DETECTORS)}")
    return DETECTORS[name](**kwargs)
