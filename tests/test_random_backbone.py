"""ldm_ext/random_backbone.py: one builder for every random backbone, the family fixing the
layout and ``Widths`` the sizes (the tiny test backbones and the benchmarks' ones)."""
from __future__ import annotations

import pytest
import torch

from ldm_ext.backbone import encode_prompt, tokenize
from ldm_ext.random_backbone import Widths, random_backbone
from ldm_ext.tiny import TINY


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_step_of_the_unet_runs_on_its_own_text_encoders(family: str) -> None:
    torch.manual_seed(0)
    backbone = random_backbone(family, TINY[family], controlnet=True, resolution=64)
    text, pooled = encode_prompt(backbone, tokenize(backbone, ["a photo"], "cpu"))
    latents = torch.randn(1, 4, 8, 8)  # (B, 4, 64 / 8, 64 / 8)
    extra = ({} if family == "sd15" else
             {"added_cond_kwargs": {"text_embeds": pooled,
                                    "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]])}})
    with torch.no_grad():
        out = backbone.unet(latents, torch.tensor([10]), text, **extra).sample
    assert out.shape == latents.shape
    assert len(backbone.text_encoders) == (1 if family == "sd15" else 2)
    assert backbone.controlnet is not None and backbone.unet.config.sample_size == 8
    assert backbone.vae.config.sample_size == 64


def test_widths_set_every_size_and_the_defaults_are_sd15s() -> None:
    with torch.device("meta"):
        backbone = random_backbone("sd15")
    assert sum(p.numel() for p in backbone.unet.parameters()) == 859_520_964  # SD1.5's UNet
    widths = Widths(unet_channels=(32, 64), text_width=16, text_layers=1, text_heads=2,
                    vae_channels=(8, 16), vae_groups=8)
    with pytest.raises(ValueError):
        random_backbone("sd15", widths)  # SD1.5's layout has four UNet levels
    with pytest.raises(ValueError, match="family"):
        random_backbone("sd3", widths)
