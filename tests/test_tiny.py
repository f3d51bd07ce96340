"""The tiny backbone's hand-set VAE (8x8 block means in and back out) and its v target."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler

from ldm_ext.tiny import tiny_backbone_dir


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_vae_keeps_the_8x8_block_means(family):
    vae = AutoencoderKL.from_pretrained(tiny_backbone_dir(family), subfolder="vae")
    image = torch.rand(2, 3, 32, 48) * 2 - 1
    blocks = F.avg_pool2d(image, 8)  # (2, 3, 4, 6)
    with torch.no_grad():
        posterior = vae.encode(image).latent_dist
        decoded = vae.decode(posterior.mean).sample
    torch.testing.assert_close(posterior.mean[:, :3], blocks, atol=1e-3, rtol=0)
    assert (posterior.mean[:, 3] == 0).all() and posterior.std.max() < 1e-5
    torch.testing.assert_close(decoded, F.interpolate(blocks, scale_factor=8), atol=1e-3, rtol=0)


def test_noise_scheduler_predicts_v():
    scheduler = DDPMScheduler.from_pretrained(tiny_backbone_dir("sd15"), subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("family, pipeline", [("sd15", "StableDiffusionPipeline"),
                                              ("sdxl", "StableDiffusionXLPipeline")])
def test_backbone_folder_is_a_diffusers_pipeline(family, pipeline):
    """``model_index.json`` and every component: ``DiffusionPipeline.from_pretrained``
    loads the folder (no safety checker, no watermarker) and samples."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_backbone_dir(family))
    assert type(pipe).__name__ == pipeline
    images = pipe("a photo of a person", num_inference_steps=2, height=64, width=64,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
