"""A tiny SD1.5- or SDXL-shaped backbone saved as a complete diffusers pipeline folder.

Same architecture families as the real models (4 UNet resolutions for SD1.5, two text
encoders and the ``text_time`` embedding for SDXL, an 8x VAE), small widths, and the real
CLIP tokenizer, so everything downstream runs the code path of the real weights. UNet and
text encoders are random; the VAE is set by hand to average 8x8 pixel blocks, so what a
model trained on it learns can be seen; the noise scheduler predicts v (``_noise_scheduler``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from diffusers import (AutoencoderKL, DDPMScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ldm_ext.random_backbone import (Widths, random_unet, random_vae, sd_noise_scheduler,
                                     text_config)
from ldm_ext.seeding import seeded
from ldm_ext.tokenizer import build_clip_tokenizer

TEXT_WIDTH = 32  # per text encoder
_TINY_COMMON = dict(text_width=TEXT_WIDTH, text_layers=2, text_heads=4, text_ff=2,
                    unet_layers=1, unet_groups=8, head_dim=4, vae_channels=(8, 16, 16, 16),
                    vae_layers=1, vae_groups=1)
TINY = {"sd15": Widths(unet_channels=(16, 32, 32, 32), **_TINY_COMMON),
        "sdxl": Widths(unet_channels=(16, 32, 32), transformer_layers=(1, 1, 2), time_embed=8,
                       **_TINY_COMMON)}
COLOURS = 3  # the VAE's latent channels 0-2 carry R, G, B (see ``_vae``)
LANE_CONSTANT = 100.0  # the constant pair beside the colours in the VAE's output norms
SILU_LINEAR = 16.0  # SiLU(x + 16) = x + 16 within 5e-6 for |x| <= 1
LATENT_SCALE = 2.0  # the demo's 8x8 block means have std 0.4-0.5: latents of unit scale


def cache_root() -> Path:
    """Where built artefacts live: $IDFORGE_CACHE or ~/.cache/idforge."""
    return Path(os.environ.get("IDFORGE_CACHE", Path.home() / ".cache" / "idforge"))


def _unet(family: str) -> UNet2DConditionModel:
    return random_unet(family, TINY[family], sample_size=16)


def _vae() -> AutoencoderKL:
    """The 8x VAE, set by hand instead of random: the encoder averages each 8x8 pixel block
    (latent channels 0-2: the block's R, G, B in [-1, 1]; channel 3: 0) and the decoder
    paints each latent pixel over its block. A random decoder turns every latent into
    noise, so no model trained on it could show what it learned; this one shows it, blocky.

    Every block passes its input on (residual branches and attention outputs zeroed, 2x2
    mean downsampling, nearest upsampling, identity shortcuts) except the two output
    GroupNorms, which divide by the image's spread. So each colour travels as a (+x, -x)
    pair beside a constant (+K, -K) pair in one group: its mean is exactly 0 and its std
    ~K sqrt(2/n) whatever the image, which the norm's weight undoes (see ``_lanes_norm``).
    """
    vae = random_vae(TINY["sd15"], sample_size=32, latent_channels=4,
                     scaling_factor=LATENT_SCALE)
    with torch.no_grad():
        for module in vae.modules():
            _pass_through(module)
        _to_lanes(vae.encoder.conv_in)
        _to_lanes(vae.decoder.conv_in)
        _lanes_norm(vae.encoder.conv_norm_out)
        _lanes_norm(vae.decoder.conv_norm_out)
        _from_lanes(vae.encoder.conv_out)
        vae.encoder.conv_out.bias[vae.config.latent_channels:] = -30.0  # log-variance: std 3e-7
        _from_lanes(vae.decoder.conv_out)
        _channel_conv(vae.quant_conv, {(0, 0): 1.0})
        _channel_conv(vae.post_quant_conv, {(0, 0): 1.0})
    return vae


def _pass_through(module: nn.Module) -> None:
    """Make one VAE building block hand its input on unchanged (resampled for the
    down/upsamplers); other modules are left alone."""
    if isinstance(module, ResnetBlock2D):  # out = shortcut(x) + conv2(...) = x
        module.conv2.weight.zero_()
        module.conv2.bias.zero_()
        if module.conv_shortcut is not None:
            _channel_conv(module.conv_shortcut, {(0, 0): 1.0})
    elif isinstance(module, Attention):  # residual connection only
        module.to_out[0].weight.zero_()
        module.to_out[0].bias.zero_()
    elif isinstance(module, Downsample2D):  # stride 2: the mean of each 2x2 block
        _channel_conv(module.conv, dict.fromkeys([(0, 0), (0, 1), (1, 0), (1, 1)], 0.25))
    elif isinstance(module, Upsample2D):  # after nearest 2x: keep the centre pixel
        _channel_conv(module.conv, {(1, 1): 1.0})


def _channel_conv(conv: nn.Conv2d, taps: dict[tuple[int, int], float]) -> None:
    """Channel c of the output = sum of ``taps`` (kernel position -> weight) of input
    channel c, for the channels both sides have; no bias."""
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(min(conv.in_channels, conv.out_channels)):
        for (row, col), weight in taps.items():
            conv.weight[c, c, row, col] = weight


def _to_lanes(conv: nn.Conv2d) -> None:
    """Input channel c (c < 3) -> output channels (2c, 2c+1) = (+x, -x); channels (6, 7)
    = (+K, -K); the rest 0."""
    centre = conv.kernel_size[0] // 2
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(COLOURS):
        conv.weight[2 * c, c, centre, centre] = 1.0
        conv.weight[2 * c + 1, c, centre, centre] = -1.0
    conv.bias[2 * COLOURS], conv.bias[2 * COLOURS + 1] = LANE_CONSTANT, -LANE_CONSTANT


def _lanes_norm(norm: nn.GroupNorm) -> None:
    """One group of n channels holding (+x, -x) pairs and (+K, -K): mean 0, std
    sqrt((2K^2 + 2 sum x^2) / n) ~ K sqrt(2/n) (relative error < 2e-4 for |x| <= 1), so the
    weight K sqrt(2/n) restores x; the bias lifts it where SiLU is the identity."""
    norm.weight.fill_(LANE_CONSTANT * (2 / norm.num_channels) ** 0.5)
    norm.bias.fill_(SILU_LINEAR)


def _from_lanes(conv: nn.Conv2d) -> None:
    """Output channel c (c < 3) = ((x + b) - (-x + b)) / 2 = x from its lane; the rest 0."""
    centre = conv.kernel_size[0] // 2
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(COLOURS):
        conv.weight[c, 2 * c, centre, centre] = 0.5
        conv.weight[c, 2 * c + 1, centre, centre] = -0.5


def _text_config() -> CLIPTextConfig:
    return text_config(TINY["sd15"])


def _noise_scheduler() -> DDPMScheduler:
    """SD's schedule with the v target: x0 = sqrt(a) x_t - sqrt(1-a) v keeps a briefly
    trained model's error as it is, while from an epsilon prediction it is multiplied by
    sqrt((1-a)/a), up to 14x at t = 999 (the demo's samples were noise after minutes)."""
    return DDPMScheduler.from_config(sd_noise_scheduler().config, prediction_type="v_prediction")


def save_tiny_backbone(folder: str | Path, family: str = "sd15", seed: int = 0) -> Path:
    """Build the tiny random backbone with a fixed seed and save it to ``folder``. The
    caller's random state is left as it was: a run that builds the cache on first use must
    draw the same numbers after it as a run that finds the cache built."""
    folder = Path(folder)
    with seeded(seed):
        _save_components(folder, family)
    return folder


def _save_components(folder: Path, family: str) -> None:
    """Every component, saved by the diffusers pipeline of ``family`` so the folder is a
    complete pipeline (``model_index.json``; no safety checker, no watermarker): the
    components are built in a fixed order, each drawing its random weights in turn."""
    parts = dict(unet=_unet(family), vae=_vae(), text_encoder=CLIPTextModel(_text_config()),
                 tokenizer=build_clip_tokenizer(folder / "tokenizer"))
    if family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection(_text_config())
        parts["tokenizer_2"] = build_clip_tokenizer(folder / "tokenizer_2")
        pipeline = StableDiffusionXLPipeline(scheduler=_noise_scheduler(), add_watermarker=False,
                                             **parts)
    else:
        pipeline = StableDiffusionPipeline(scheduler=_noise_scheduler(), safety_checker=None,
                                           feature_extractor=None,
                                           requires_safety_checker=False, **parts)
    pipeline.save_pretrained(folder)


def tiny_backbone_dir(family: str = "sd15") -> Path:
    """The cached tiny backbone for ``family``, built on first use (``cached_build``); the
    name's version changes whenever the folder's contents do, so old caches are rebuilt."""
    return cached_build(f"tiny-{family}-v3", lambda folder: save_tiny_backbone(folder, family))


def cached_build(name: str, build: Callable[[Path], object]) -> Path:
    """``cache_root() / name``, made on first use by ``build(folder)`` into a temporary
    folder renamed into place, so it appears atomically (safe when several DDP processes
    race to build it: the builds are seeded, so every copy is identical)."""
    return build_once(cache_root() / name, build)


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """``target``, made by ``build(folder)`` unless it exists (see ``cached_build``)."""
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target
