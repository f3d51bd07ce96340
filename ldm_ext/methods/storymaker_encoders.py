"""StoryMaker's frozen reference encoders (Sec. 4.2): ArcFace for the face identity and the
CLIP ViT-H/14 image encoder for face and character crops (``hidden_states[-2]``).

Both are named in the config: ``method.face_encoder`` / ``face_weights`` (insightface
``buffalo_l`` ONNX, or a torch IResNet state dict, or ``random`` for the offline demo) and
``method.image_encoder`` (a transformers ``CLIPVisionModelWithProjection`` hub id or folder,
e.g. ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` or IP-Adapter's ``models/image_encoder``;
``tiny`` builds a random-initialised tiny one once into the cache, for tests and the demo).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from ldm_ext.cli import UserError
from ldm_ext.seeding import seeded

# CLIPImageProcessor's normalisation (OpenAI CLIP), as IP-Adapter and StoryMaker use it
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoderMissing(UserError, RuntimeError):
    """The CLIP image encoder named in the config cannot be loaded; says how to get it."""


def _tiny_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, image_size=224, patch_size=32,
                            projection_dim=32)


def _save_tiny(folder: Path) -> None:
    with seeded(0):  # the caller's random state kept
        CLIPVisionModelWithProjection(_tiny_config()).save_pretrained(folder)


def tiny_image_encoder_dir() -> Path:
    """The cached tiny random CLIP vision model, built on first use."""
    from ldm_ext.tiny import cached_build

    return cached_build("tiny-clip-vision-v1", _save_tiny)


def load_image_encoder(name: str, dtype: torch.dtype = torch.float32,
                       local_files_only: bool = False) -> CLIPVisionModelWithProjection:
    """The frozen CLIP image encoder ``name`` (hub id, folder, ``tiny``, or ``published``:
    CLIP ViT-H/14's shape with random weights, no file), in eval mode."""
    if name == "published":
        from ldm_ext.fullsize import image_encoder

        return image_encoder().to(dtype).requires_grad_(False).eval()
    source = str(tiny_image_encoder_dir()) if name == "tiny" else name
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            source, torch_dtype=dtype, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise ImageEncoderMissing(
            f"could not load the CLIP image encoder '{name}' ({err.__class__.__name__}): "
            "download laion/CLIP-ViT-H-14-laion2B-s32B-b79K (or h94/IP-Adapter "
            "models/image_encoder) and set method.image_encoder to its folder, or use "
            "method.image_encoder=tiny for the offline demo") from None
    return encoder.requires_grad_(False).eval()


def clip_features(encoder: CLIPVisionModelWithProjection, images: torch.Tensor) -> torch.Tensor:
    """images (K, 3, H, W) in [0, 1] -> penultimate hidden states (K, T, C). Resized to the
    encoder's input (bicubic) unless already there, then CLIP-normalised."""
    weight = encoder.vision_model.embeddings.patch_embedding.weight
    side = encoder.config.image_size
    x = images.to(device=weight.device, dtype=torch.float32)
    if x.shape[-2:] != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
    mean = x.new_tensor(CLIP_MEAN)[:, None, None]
    std = x.new_tensor(CLIP_STD)[:, None, None]
    out = encoder(((x - mean) / std).to(weight.dtype), output_hidden_states=True)
    return out.hidden_states[-2]


def build_identity_encoder(method_cfg):
    """The ArcFace encoder the config names (``ldm_ext.face``): insightface's buffalo_l
    ONNX model, or a torch IResNet of ``face_arch`` (``face_weights`` path or random)."""
    from ldm_ext.face import build_face_encoder

    extra = {"arch": method_cfg.face_arch} if method_cfg.face_encoder == "arcface" else {}
    return build_face_encoder(method_cfg.face_encoder, weights=method_cfg.face_weights, **extra)


def build_id_loss_encoder(method_cfg):
    """The differentiable ArcFace of the optional ID loss (a torch IResNet: insightface's
    ONNX passes no gradient), or None while ``id_loss_weight`` is 0. Fails here, at build
    time, when its weights are not named or not found."""
    from ldm_ext.face import ArcFaceEncoder, FaceModelMissing

    if not method_cfg.id_loss_weight:
        return None
    weights = method_cfg.id_loss_weights
    if not weights:
        raise FaceModelMissing(
            f"method.id_loss_weight={method_cfg.id_loss_weight} needs method.id_loss_weights: "
            "the path of an arcface_torch IResNet backbone.pth of method.id_loss_arch "
            "(or 'random' for tests); or set method.id_loss_weight=0")
    try:
        return ArcFaceEncoder(weights=weights, arch=method_cfg.id_loss_arch)
    except FaceModelMissing as error:
        raise FaceModelMissing(f"method.id_loss_weights: {error}") from None
