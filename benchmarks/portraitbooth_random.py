"""An SD1.5-shaped PortraitBooth with random weights, built in memory (no download), and a
CelebV-Text-like portrait batch, shared by the PortraitBooth benchmarks.

UNet and VAE are both at a fifth of SD1.5's widths (VAE norm groups 8 so its widths divide),
so their relative costs, which decide DIP's overhead, stay SD1.5's; the CLIP text encoder
is smaller (its cost is the same on both sides of every comparison)."""
from __future__ import annotations

import tempfile

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ldm_ext.backbone import Backbone
from ldm_ext.config import load_config
from ldm_ext.face import build_face_encoder
from ldm_ext.methods.portraitbooth import PortraitBooth
from ldm_ext.tiny import sd_noise_scheduler
from ldm_ext.tokenizer import build_clip_tokenizer

FACE_BOX = [0.3, 0.2, 0.7, 0.7]  # a portrait's face: 40 % x 50 % of the frame


def random_portraitbooth(resolution: int, overrides: list[str] | None = None) -> PortraitBooth:
    """PortraitBooth on SD1.5's architecture at 1/5 widths, random-init FaceNet."""
    unet = UNet2DConditionModel(block_out_channels=(64, 128, 256, 256), cross_attention_dim=256,
                                attention_head_dim=8, sample_size=resolution // 8)
    vae = AutoencoderKL(block_out_channels=(24, 48, 104, 104), layers_per_block=2,
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=resolution)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=256, intermediate_size=1024,
                                        num_hidden_layers=4, num_attention_heads=4,
                                        max_position_embeddings=77, vocab_size=49408))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(tmp)
    backbone = Backbone("sd15", unet, vae, [text], [tokenizer], sd_noise_scheduler())
    cfg = load_config("configs/experiment/portraitbooth_demo.yaml",
                      [f"data.resolution={resolution}", "method.face_weights=random",
                       "method.attention_size=32", "method.dip_window_margin=4",
                       *(overrides or [])])
    return PortraitBooth(cfg, backbone, build_face_encoder("facenet", weights="random"))


def portrait_batch(batch_size: int, resolution: int, seed: int = 0) -> dict:
    """A float PortraitBooth batch: one subject per image, face box ``FACE_BOX``, the
    inscribed ellipse as its face mask, a caption with an identity and an emotion word."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, resolution), torch.linspace(0, 1, resolution),
                            indexing="ij")
    x0, y0, x1, y1 = FACE_BOX
    ellipse = (((xs - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2
               + ((ys - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2 <= 1).float()
    pixels = torch.rand(batch_size, 3, resolution, resolution, generator=gen) * 2 - 1
    return {"pixel_values": pixels,
            "caption": ["a photo of a smiling woman talking to the camera"] * batch_size,
            "reference": torch.rand(batch_size, 1, 3, 160, 160, generator=gen) * 2 - 1,
            "face_boxes": torch.tensor([[FACE_BOX]] * batch_size),
            "face_valid": torch.ones(batch_size, 1, dtype=torch.bool),
            "face_masks": ellipse.expand(batch_size, 1, -1, -1).clone()}
