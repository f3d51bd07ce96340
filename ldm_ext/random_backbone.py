"""Backbones of SD1.5's or SDXL's architecture at any widths, with random weights, built in
memory (no download).

One builder for every random backbone: the tiny test backbones (``ldm_ext/tiny.py`` saves
them as pipeline folders) and the benchmarks' mid-size and full-size ones differ only in
their ``Widths``. The family fixes the layout: SD1.5 has cross-attention in the first three
of four UNet levels and one CLIP text encoder; SDXL has it in the last two of three levels
(linear projections, several transformer blocks per level), two text encoders whose tokens
are concatenated, and the ``text_time`` embedding of the second one's pooled output and the
six size/crop ids. The VAE is the 8x KL VAE of both (four levels).

The text encoders, tokenizer and ``Backbone`` are imported where they are built, so a
benchmark that builds only a UNet (``benchmarks/controlnet_step.py``, which measures
resident memory) loads no more than the UNet's code.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffusers import UNet2DConditionModel

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig

    from ldm_ext.backbone import Backbone

FAMILIES = ("sd15", "sdxl")
TIME_IDS = 6  # SDXL's added time ids: original size, crop corner, target size


@dataclass(frozen=True)
class Widths:
    """Sizes of a random backbone; the defaults are SD1.5's own (UNet 860M, CLIP ViT-L/14
    text, the 8x VAE)."""

    unet_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # per UNet level (SDXL: 3)
    text_width: int = 768  # per text encoder
    text_layers: int = 12
    text_heads: int = 12
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)  # per VAE level
    text_ff: int = 4  # the text MLP's width, in text widths
    unet_layers: int = 2  # ResNet blocks per UNet level
    unet_groups: int = 32  # GroupNorm groups in the UNet
    head_dim: int | tuple[int, ...] = 8  # per head (or per level)
    transformer_layers: int | tuple[int, ...] = 1  # transformer blocks per attention level
    time_embed: int = 256  # SDXL: width of each embedded time id
    vae_layers: int = 2  # ResNet blocks per VAE level
    vae_groups: int = 32  # GroupNorm groups in the VAE


def random_unet(family: str, widths: Widths, sample_size: int) -> UNet2DConditionModel:
    """``family``'s UNet layout at ``widths``; ``sample_size``: its default latent side."""
    common = dict(block_out_channels=widths.unet_channels, layers_per_block=widths.unet_layers,
                  norm_num_groups=widths.unet_groups, attention_head_dim=widths.head_dim,
                  transformer_layers_per_block=widths.transformer_layers,
                  sample_size=sample_size)
    if family == "sd15":  # diffusers' default block types are SD1.5's
        return UNet2DConditionModel(cross_attention_dim=widths.text_width, **common)
    return UNet2DConditionModel(
        cross_attention_dim=2 * widths.text_width,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=widths.time_embed,
        projection_class_embeddings_input_dim=TIME_IDS * widths.time_embed + widths.text_width,
        **common)


def random_vae(widths: Widths, sample_size: int, **config) -> AutoencoderKL:
    """The 8x KL VAE at ``widths`` (``config``: other ``AutoencoderKL`` arguments)."""
    from diffusers import AutoencoderKL

    levels = len(widths.vae_channels)
    return AutoencoderKL(block_out_channels=widths.vae_channels,
                         layers_per_block=widths.vae_layers, norm_num_groups=widths.vae_groups,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, sample_size=sample_size,
                         **config)


def text_config(widths: Widths) -> CLIPTextConfig:
    """A CLIP text tower at ``widths`` with CLIP's vocabulary, 77 positions and token ids."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=widths.text_width,
                          intermediate_size=widths.text_ff * widths.text_width,
                          num_hidden_layers=widths.text_layers,
                          num_attention_heads=widths.text_heads, vocab_size=49408,
                          max_position_embeddings=77, projection_dim=widths.text_width,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def random_text_encoders(family: str, widths: Widths) -> list:
    """One CLIP text encoder (SD1.5) or two, the second with the pooled projection (SDXL)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    encoders = [CLIPTextModel(text_config(widths))]
    if family == "sdxl":
        encoders.append(CLIPTextModelWithProjection(text_config(widths)))
    return encoders


def sd_noise_scheduler() -> DDPMScheduler:
    """SD's training noise schedule (scaled-linear betas 0.00085-0.012, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False,
                         steps_offset=1)


def random_backbone(family: str = "sd15", widths: Widths = Widths(), controlnet: bool = False,
                    resolution: int = 512) -> Backbone:
    """A ``family`` backbone at ``widths`` with random weights (UNet, VAE, text encoders in
    that order from torch's random state), the real CLIP tokenizer, SD's noise schedule and,
    with ``controlnet``, ``ControlNetModel.from_unet``; ``resolution``: the default image
    side in the models' configs."""
    from diffusers import ControlNetModel

    from ldm_ext.backbone import Backbone
    from ldm_ext.tokenizer import build_clip_tokenizer

    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: one of {FAMILIES}")
    unet = random_unet(family, widths, resolution // 8)
    vae = random_vae(widths, resolution)
    encoders = random_text_encoders(family, widths)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(tmp)
    return Backbone(family, unet, vae, encoders, [tokenizer] * len(encoders),
                    sd_noise_scheduler(), ControlNetModel.from_unet(unet) if controlnet else None)
