"""An SD1.5-size backbone (+ ControlNet) with random weights, built in memory (no
download), shared by the step benchmarks."""
from __future__ import annotations

import tempfile

from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ldm_ext.backbone import Backbone
from ldm_ext.tiny import sd_noise_scheduler
from ldm_ext.tokenizer import build_clip_tokenizer


def random_backbone(unet_channels=(320, 640, 1280, 1280), text_width: int = 768,
                    text_layers: int = 12, text_heads: int = 12,
                    vae_channels=(128, 256, 512, 512)) -> Backbone:
    """SD1.5's architecture with random weights; the defaults are SD1.5's own sizes
    (UNet 860M, ControlNet from it, VAE, CLIP ViT-L text), smaller widths for cheap runs."""
    unet = UNet2DConditionModel(block_out_channels=unet_channels, cross_attention_dim=text_width,
                                attention_head_dim=8, sample_size=64)
    vae = AutoencoderKL(block_out_channels=vae_channels, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=text_width, intermediate_size=4 * text_width,
                                        num_hidden_layers=text_layers,
                                        num_attention_heads=text_heads,
                                        max_position_embeddings=77, vocab_size=49408))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(tmp)
    return Backbone("sd15", unet, vae, [text], [tokenizer], sd_noise_scheduler(),
                    ControlNetModel.from_unet(unet))
