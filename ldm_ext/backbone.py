"""Load the diffusion backbone: UNet, VAE, text encoder(s), tokenizer(s), noise scheduler
and ControlNet, for SD1.5 and SDXL, from a hub id or a local diffusers folder.

``pretrained: tiny`` builds a random-initialised, small-width backbone once, saves it in
the diffusers layout, and then loads it through exactly the same ``from_pretrained``
calls as real weights (see ``ldm_ext/tiny.py``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ldm_ext.cli import UserError
from ldm_ext.tokenizer import check_tokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackboneError(UserError, RuntimeError):
    """A backbone component could not be loaded; the message says which and how to fix it."""


@dataclass
class Backbone:
    """The frozen diffusion model parts plus an optional ControlNet."""

    family: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list
    tokenizers: list
    scheduler: DDPMScheduler
    controlnet: ControlNetModel | None = None
    source: str = ""

    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def num_levels(self) -> int:
        """Number of UNet resolutions (4 for SD1.5, 3 for SDXL)."""
        return len(self.unet.config.block_out_channels)


def _offline(local_files_only: bool) -> bool:
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


def _load(cls, source: str, subfolder: str | None, component: str, **kwargs):
    """``cls.from_pretrained`` with one clear error naming the component and the fix."""
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as err:
        where = f"{source}/{subfolder}" if subfolder else source
        raise BackboneError(
            f"could not load the {component} from '{where}': {err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}\n"
            "Provide it by pointing the config at a local diffusers folder "
            "(model.pretrained=/path/to/model or model.controlnet=/path/to/controlnet), "
            "by downloading it into the Hugging Face cache on a machine with network "
            "(hf download <id>), or use model.pretrained=tiny for the "
            "offline demo."
        ) from None


def _load_tokenizer(source: str, subfolder: str, kwargs: dict) -> CLIPTokenizer:
    tokenizer = _load(CLIPTokenizer, source, subfolder, f"tokenizer ({subfolder})", **kwargs)
    check_tokenizer(tokenizer, f"{source}/{subfolder}")
    return tokenizer


def _text_stack(source: str, family: str, dtype: torch.dtype, kwargs: dict):
    names = [("text_encoder", "tokenizer", CLIPTextModel)]
    if family == "sdxl":
        names.append(("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection))
    encoders = [
        _load(cls, source, enc, enc.replace("_", " "), dtype=dtype, **kwargs)
        for enc, _, cls in names
    ]
    tokenizers = [_load_tokenizer(source, tok, kwargs) for _, tok, _ in names]
    return encoders, tokenizers


def load_controlnet(spec: str | None, unet: UNet2DConditionModel, kwargs: dict,
                    dtype: torch.dtype = torch.float32):
    """``from_unet`` copies the UNet's encoder (ControlNet's recipe, zero-initialised
    outputs); any other string is a hub id or folder of a pretrained ControlNet. In
    ``dtype``, the frozen parts' (a method that trains it upcasts it): a frozen ControlNet
    in another dtype than the UNet fails on the UNet's latents outside autocast."""
    if spec is None:
        return None
    if spec == "from_unet":
        return ControlNetModel.from_unet(unet).to(dtype)
    return _load(ControlNetModel, spec, None, "ControlNet", torch_dtype=dtype, **kwargs)


def resolve_source(pretrained: str, family: str) -> str:
    """Map ``tiny`` to the cached tiny backbone folder (built on first use)."""
    if pretrained != "tiny":
        return pretrained
    from ldm_ext.tiny import tiny_backbone_dir

    return str(tiny_backbone_dir(family))


PUBLISHED = "published"  # model.pretrained: the family's published shapes, random weights


def load_backbone(model_cfg) -> Backbone:
    """Load every component named by a ``ModelConfig``; frozen parts in ``weight_dtype``.
    ``pretrained: published`` builds the family's published shapes with random weights and
    reads no file (``ldm_ext.fullsize``; on the meta device: parameter counts and plans)."""
    if model_cfg.pretrained == PUBLISHED:
        from ldm_ext.fullsize import published_backbone

        return published_backbone(model_cfg)
    source = resolve_source(model_cfg.pretrained, model_cfg.family)
    kwargs = {"local_files_only": _offline(model_cfg.local_files_only)}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    dtype = DTYPES[model_cfg.weight_dtype]
    variant = {"variant": model_cfg.variant} if model_cfg.variant else {}
    unet = _load(UNet2DConditionModel, source, "unet", "UNet", torch_dtype=dtype, **kwargs,
                 **variant)
    vae = _load(AutoencoderKL, source, "vae", "VAE", torch_dtype=dtype, **kwargs, **variant)
    encoders, tokenizers = _text_stack(source, model_cfg.family, dtype, kwargs)
    scheduler = _load(DDPMScheduler, source, "scheduler", "noise scheduler", **kwargs)
    controlnet = load_controlnet(model_cfg.controlnet, unet, kwargs, dtype)
    return Backbone(model_cfg.family, unet, vae, encoders, tokenizers, scheduler,
                    controlnet, source)


def encode_prompt(backbone: Backbone, input_ids: list[torch.Tensor]) -> tuple:
    """Token ids (one tensor (B, 77) per tokenizer) -> (hidden (B, 77, D), pooled | None).

    SD1.5: last hidden state of the one encoder. SDXL: penultimate hidden states of both
    encoders concatenated on the feature axis, pooled projection of the second.
    """
    if backbone.family == "sd15":
        return backbone.text_encoders[0](input_ids[0])[0], None
    hidden, pooled = [], None
    for encoder, ids in zip(backbone.text_encoders, input_ids):
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last (projection) encoder's pooled output wins
    return torch.cat(hidden, dim=-1), pooled


def tokenize(backbone: Backbone, prompts: list[str], device=None) -> list[torch.Tensor]:
    """Prompts -> one (B, 77) id tensor per tokenizer, padded/truncated to 77."""
    return [
        tok(prompts, padding="max_length", max_length=tok.model_max_length,
            truncation=True, return_tensors="pt").input_ids.to(device)
        for tok in backbone.tokenizers
    ]
