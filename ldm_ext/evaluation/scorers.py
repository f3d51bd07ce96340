"""Networks behind the metrics: CLIP (open_clip) and face detection + recognition.

Both scorers are batched: images go through the networks ``batch_size`` at a time (CLIP
preprocesses same-size images together on its device); ``batch_size=1`` is the
one-image-at-a-time baseline of ``benchmarks/scoring_throughput.py``.

* :class:`CLIPScorer`: open_clip model by name + pretrained tag (OpenAI ViT-L/14 for the
  protocol's text score, LAION ViT-H/14 for StoryMaker's CLIP-I), a local checkpoint
  path, or "random" (random init: shapes and plumbing only, the scores mean nothing).
  Preprocessing as docs/benchmark.md states: [-1, 1] -> [0, 1], bicubic resize of the
  shorter side to 224, centre crop, CLIP normalisation.
* :class:`FaceScorer`: a detector + an encoder of ``ldm_ext.face`` (protocol: MTCNN with
  its own thresholds + FaceNet vggface2; StoryMaker: insightface buffalo_l; dlib offline).
  Same-size images are detected by MTCNN in one batched call.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from facenet_pytorch.models.utils.detect_face import extract_face

from ldm_ext.face import Faces, MTCNNDetector, build_face_detector, build_face_encoder
from ldm_ext.face.align import crops_to_tensor, to_rgb_array
from ldm_ext.cli import UserError
from ldm_ext.face.detect import largest_first

ImageLike = PIL.Image.Image | np.ndarray
# A small open_clip architecture for offline tests and the tiny eval config (random init).
TINY_CLIP = "idforge-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32,
                   "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 2},
}


class ClipModelMissing(UserError, RuntimeError):
    """CLIP weights are not available locally (and could not be fetched)."""


def to_chw(image: ImageLike | torch.Tensor) -> torch.Tensor:
    """(3, H, W): uint8 for a PIL image or an HWC uint8 array, a float tensor in [-1, 1] as
    given. Nothing is converted to float here: that happens on the scoring device."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.array(to_rgb_array(image))).permute(2, 0, 1)  # writable copy


def clip_preprocess(images: torch.Tensor, size: int, mean: Sequence[float],
                    std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W), uint8 or float in [-1, 1] -> (..., 3, size, size) on the
    same device: to [0, 1], bicubic shorter side -> size, centre crop, CLIP normalisation
    (docs/benchmark.md "Scoring")."""
    x = images[None] if images.dim() == 3 else images
    x = x.float() / 255 if x.dtype == torch.uint8 else ((x.float() + 1.0) / 2.0).clamp(0, 1)
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    new_hw = (max(size, round(height * scale)), max(size, round(width * scale)))
    x = F.interpolate(x, size=new_hw, mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
    x = x[..., top:top + size, left:left + size].clamp(0, 1)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    out = (x - mean_t) / std_t
    return out[0] if images.dim() == 3 else out


def _register_tiny_clip() -> None:
    """Make ``TINY_CLIP`` known to open_clip through its public ``add_model_config``."""
    import open_clip

    if TINY_CLIP in open_clip.list_models():
        return
    folder = tempfile.mkdtemp(prefix="idforge-clip-")
    path = os.path.join(folder, f"{TINY_CLIP}.json")
    with open(path, "w") as handle:
        json.dump(TINY_CLIP_CONFIG, handle)
    open_clip.add_model_config(path)


def load_clip(model: str, pretrained: str, device: str = "cpu"):
    """open_clip model (eval mode) and tokenizer. ``pretrained``: an open_clip tag, a local
    checkpoint file, or "random". Raises :class:`ClipModelMissing` naming what is missing."""
    import open_clip

    if model == TINY_CLIP:
        _register_tiny_clip()
    weights = None if pretrained == "random" else pretrained
    try:
        net = open_clip.create_model(model, pretrained=weights, device=device)
    except RuntimeError as error:
        raise ClipModelMissing(
            f"CLIP {model} weights '{pretrained}' are not available: {error}. Put them in the "
            "Hugging Face cache (e.g. run once online: open_clip.create_model("
            f"'{model}', pretrained='{pretrained}')), or pass a local checkpoint path, or "
            "'random' (meaningless scores, plumbing only).") from None
    return net.eval().requires_grad_(False), open_clip.get_tokenizer(model)


class CLIPScorer:
    """CLIP image/text embeddings and scores, ``batch_size`` images per forward.

    Args:
        model: open_clip architecture ("ViT-L-14", "ViT-H-14", ``TINY_CLIP``, ...).
        pretrained: open_clip tag ("openai", "laion2b_s32b_b79k"), checkpoint path or "random".
        device: torch device.
        batch_size: images per forward pass.
    """

    def __init__(self, model: str = "ViT-L-14", pretrained: str = "openai",
                 device: str = "cpu", batch_size: int = 32) -> None:
        self.name = f"{model}/{pretrained}"
        self.device, self.batch_size = device, batch_size
        self.model, self.tokenizer = load_clip(model, pretrained, device)
        cfg = self.model.visual.preprocess_cfg
        self.size = int(np.atleast_1d(self.model.visual.image_size)[0])
        self.mean, self.std = cfg["mean"], cfg["std"]
        self._text_cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageLike | torch.Tensor]) -> np.ndarray:
        """(B, D) L2-normalised image embeddings of images in [-1, 1] (tensors) or uint8."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = self.preprocess([to_chw(im) for im in images[start:start + self.batch_size]])
            out.append(self.model.encode_image(batch, normalize=True).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim))

    def preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(b, 3, S, S) on the device: images of one size and dtype are moved together (uint8
        when they are uint8) and preprocessed in one call; generated images all are."""
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((tuple(image.shape), image.dtype), []).append(i)
        batch = torch.empty(len(images), 3, self.size, self.size, device=self.device)
        for members in groups.values():
            same = torch.stack([images[i] for i in members]).to(self.device)
            batch[members] = clip_preprocess(same, self.size, self.mean, self.std)
        return batch

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(B, D) L2-normalised text embeddings; each distinct text is encoded once."""
        new = sorted({t for t in texts if t not in self._text_cache})
        for start in range(0, len(new), self.batch_size):
            chunk = new[start:start + self.batch_size]
            tokens = self.tokenizer(chunk).to(self.device)
            vectors = self.model.encode_text(tokens, normalize=True).cpu().numpy()
            self._text_cache.update(zip(chunk, vectors))
        return np.stack([self._text_cache[t] for t in texts]) if texts else \
            np.zeros((0, self.embed_dim))

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) \
            if getattr(self.model, "text_projection", None) is not None else 0

    def text_scores(self, images: Sequence, prompts: Sequence[str]) -> np.ndarray:
        """CLIP-T per image: cosine of image ``i`` and ``prompts[i]`` -> (B,)."""
        from ldm_ext.evaluation.metrics import clip_t

        return clip_t(self.encode_images(images), self.encode_texts(prompts))


def detect_batch(detector, images: Sequence[ImageLike]) -> list[Faces]:
    """Faces of each image. MTCNN detects a run of same-size images in one batched call
    (facenet-pytorch stacks them per pyramid scale); other detectors go image by image."""
    arrays = [to_rgb_array(im) for im in images]
    same_size = len({a.shape for a in arrays}) == 1
    if not isinstance(detector, MTCNNDetector) or len(arrays) < 2 or not same_size:
        return [detector.detect(a) for a in arrays]
    pils = [PIL.Image.fromarray(a) for a in arrays]
    boxes, probs, points = detector.mtcnn.detect(pils, landmarks=True)
    return [_mtcnn_faces(detector, pil, b, p, l) for pil, b, p, l in zip(pils, boxes, probs,
                                                                          points)]


def _mtcnn_faces(detector: MTCNNDetector, pil: PIL.Image.Image, boxes, probs,
                 points) -> Faces:
    """One image's batched MTCNN output -> Faces, as ``MTCNNDetector.detect`` makes them."""
    if boxes is None or len(np.atleast_1d(probs)) == 0 or probs[0] is None:
        return Faces.empty(detector.crop_size)
    boxes = np.asarray(boxes, np.float32)  # unclipped, as MTCNNDetector.detect
    scores = np.asarray(probs, np.float32)
    keep = np.flatnonzero(scores >= detector.min_score)
    order = keep[largest_first(boxes[keep], scores[keep])]
    crops = [np.asarray(extract_face(pil, box, detector.crop_size, detector.margin))
             .transpose(1, 2, 0).astype(np.uint8) for box in boxes[order]]  # (S, S, 3)
    return Faces(boxes[order], np.asarray(points, np.float32)[order], scores[order],
                 crops_to_tensor(crops, detector.crop_size))


class FaceScorer:
    """Face embeddings of every face in a list of images, largest face first.

    Args:
        detector: a ``FaceDetector`` (protocol: ``MTCNNDetector(min_score=0.0)``).
        encoder: a ``FaceEncoder`` (protocol: ``FaceNetEncoder("vggface2")``).
        batch_size: images per detection call and crops per encoder forward.
    """

    def __init__(self, detector, encoder, batch_size: int = 32) -> None:
        self.detector, self.encoder, self.batch_size = detector, encoder, batch_size
        self.name = f"{detector.name}+{encoder.name}"

    def detect(self, images: Sequence[ImageLike]) -> list[Faces]:
        """Detections per image, ``batch_size`` images per detector call."""
        found: list[Faces] = []
        for start in range(0, len(images), self.batch_size):
            found += detect_batch(self.detector, images[start:start + self.batch_size])
        return found

    @torch.no_grad()
    def encode(self, crops: torch.Tensor) -> np.ndarray:
        """(F, 3, S, S) crops -> (F, D) normalised embeddings, ``batch_size`` per forward."""
        out = [self.encoder.encode(crops[i:i + self.batch_size]).global_.float().cpu()
               for i in range(0, len(crops), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.encoder.global_dim))

    def embed(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """Per image (F_i, D) embeddings of its faces, largest first (F_i may be 0)."""
        faces = self.detect(images)
        crops = [f.crops for f in faces]
        flat = self.encode(torch.cat(crops)) if crops else np.zeros((0, 0))
        bounds = np.cumsum([0] + [len(c) for c in crops])
        return [flat[bounds[i]:bounds[i + 1]] for i in range(len(crops))]

    def references(self, photos: Sequence[ImageLike]) -> np.ndarray:
        """(R, D) embedding of the largest face of each reference photo."""
        embeddings = self.embed(photos)
        for i, found in enumerate(embeddings):
            if len(found) == 0:
                raise ValueError(f"no face found in reference photo {i} ({self.detector.name})")
        return np.stack([found[0] for found in embeddings])


def build_face_scorer(detector: str = "mtcnn", encoder: str = "facenet",
                      weights: str | None = None, min_score: float = 0.0,
                      device: str = "cpu", batch_size: int = 32) -> FaceScorer:
    """FaceScorer by backend names; defaults are the FastComposer protocol (MTCNN with its
    own thresholds only, FaceNet vggface2). Missing weights raise ``FaceModelMissing``."""
    det_kwargs: dict = {"min_score": min_score}
    if detector in ("mtcnn", "insightface"):
        det_kwargs["device"] = device
    enc_kwargs: dict = {"device": device} if encoder == "insightface" else {}
    face_encoder = build_face_encoder(encoder, weights=weights, **enc_kwargs)
    if isinstance(face_encoder, torch.nn.Module):
        face_encoder = face_encoder.to(device)
    return FaceScorer(build_face_detector(detector, **det_kwargs), face_encoder, batch_size)
