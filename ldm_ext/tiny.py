"""A tiny, random-initialised SD1.5- or SDXL-shaped backbone saved in the diffusers layout.

Same architecture families as the real models (4 UNet resolutions for SD1.5, two text
encoders and the ``text_time`` embedding for SDXL, an 8x VAE), small widths, and the real
CLIP tokenizer, so everything downstream runs the code path of the real weights.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ldm_ext.tokenizer import build_clip_tokenizer

TEXT_WIDTH = 32  # per text encoder


def cache_root() -> Path:
    """Where built artefacts live: $IDFORGE_CACHE or ~/.cache/idforge."""
    return Path(os.environ.get("IDFORGE_CACHE", Path.home() / ".cache" / "idforge"))


def _unet(family: str) -> UNet2DConditionModel:
    common = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                  norm_num_groups=8, attention_head_dim=4)
    if family == "sd15":
        return UNet2DConditionModel(
            block_out_channels=(16, 32, 32, 32), cross_attention_dim=TEXT_WIDTH,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **common)
    return UNet2DConditionModel(
        block_out_channels=(16, 32, 32), cross_attention_dim=2 * TEXT_WIDTH,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH, **common)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), norm_num_groups=8, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def _text_config() -> CLIPTextConfig:
    return CLIPTextConfig(hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, vocab_size=49408, max_position_embeddings=77,
                          projection_dim=TEXT_WIDTH, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407)


def sd_noise_scheduler() -> DDPMScheduler:
    """SD's training noise schedule (scaled-linear betas 0.00085-0.012, 1000 steps)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False,
                         steps_offset=1)


def save_tiny_backbone(folder: str | Path, family: str = "sd15", seed: int = 0) -> Path:
    """Build the tiny random backbone with a fixed seed and save it to ``folder``. The
    caller's random state is left as it was: a run that builds the cache on first use must
    draw the same numbers after it as a run that finds the cache built."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _save_components(folder, family)
    return folder


def _save_components(folder: Path, family: str) -> None:
    _unet(family).save_pretrained(folder / "unet")
    _vae().save_pretrained(folder / "vae")
    CLIPTextModel(_text_config()).save_pretrained(folder / "text_encoder")
    build_clip_tokenizer(folder / "tokenizer")
    if family == "sdxl":
        CLIPTextModelWithProjection(_text_config()).save_pretrained(folder / "text_encoder_2")
        build_clip_tokenizer(folder / "tokenizer_2")
    sd_noise_scheduler().save_pretrained(folder / "scheduler")


def tiny_backbone_dir(family: str = "sd15") -> Path:
    """The cached tiny backbone for ``family``, built on first use (``cached_build``)."""
    return cached_build(f"tiny-{family}-v1", lambda folder: save_tiny_backbone(folder, family))


def cached_build(name: str, build: Callable[[Path], object]) -> Path:
    """``cache_root() / name``, made on first use by ``build(folder)`` into a temporary
    folder renamed into place, so it appears atomically (safe when several DDP processes
    race to build it: the builds are seeded, so every copy is identical)."""
    target = cache_root() / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    build(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target
