"""An SD1.5-shaped PortraitBooth with random weights, built in memory (no download), and a
CelebV-Text-like portrait batch, shared by the PortraitBooth benchmarks.

UNet and VAE are both at a fifth of SD1.5's widths (VAE norm groups 8 so its widths divide),
so their relative costs, which decide DIP's overhead, stay SD1.5's; the CLIP text encoder
is smaller (its cost is the same on both sides of every comparison)."""
from __future__ import annotations

import torch

from ldm_ext.config import load_config
from ldm_ext.face import build_face_encoder
from ldm_ext.methods.portraitbooth import PortraitBooth
from ldm_ext.random_backbone import Widths, random_backbone

FACE_BOX = [0.3, 0.2, 0.7, 0.7]  # a portrait's face: 40 % x 50 % of the frame
WIDTHS = Widths(unet_channels=(64, 128, 256, 256), text_width=256, text_layers=4, text_heads=4,
                vae_channels=(24, 48, 104, 104), vae_groups=8)


def random_portraitbooth(resolution: int, overrides: list[str] | None = None) -> PortraitBooth:
    """PortraitBooth on SD1.5's architecture at 1/5 widths, random-init FaceNet."""
    backbone = random_backbone("sd15", WIDTHS, resolution=resolution)
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
