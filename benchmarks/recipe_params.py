"""Exact parameter counts of each method's training recipe, frozen and trainable apart.

Every model is built with its real shape on the meta device (no memory, no weights), by the
builders ``ldm_ext/fullsize.py`` writes its random folders with: SD1.5 (UNet, VAE, CLIP ViT-L
text encoder) or SDXL base 1.0 (the UNet, VAE and two text encoders of its published
configs), the recipe's ControlNet
(``ControlNetModel.from_unet`` of its UNet: InstantFamily's trainable one, and the frozen
OpenPose ControlNets StoryMaker names, taken as full copies of their UNet's encoder, as
lllyasviel's SD1.5 one is), the method's encoders and its own modules
built from its config (``ldm_ext/adapters``). What trains is what the method's
``trainable_modules()`` holds (``ldm_ext/methods/*.py``), selected here with the same
helpers; a parameter inside a frozen model that trains (StoryMaker's LoRA and K_i / V_i in
the UNet) counts as trainable, not frozen. Used by ``memory_plan.py``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ldm_ext import fullsize

Counts = dict[str, tuple[int, bool]]  # part -> (parameters, trainable)


def count(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def split(name: str, module: nn.Module, trains: Iterable[nn.Parameter],
          trained: str) -> Counts:
    """``module``'s parameters as frozen part ``name`` and trainable part ``trained`` (those
    in ``trains``; left out when none)."""
    ids = {id(p) for p in trains}
    trainable = count(p for p in module.parameters() if id(p) in ids)
    frozen = count(module.parameters()) - trainable
    return {name: (frozen, False), **({trained: (trainable, True)} if trainable else {})}


def backbone(family: str) -> dict[str, nn.Module]:
    """UNet, VAE and text encoder(s) of ``family``, from the published configs that
    ``ldm_ext/fullsize.py`` writes full-size random folders from."""
    return {"unet": fullsize.unet(family), "vae": fullsize.vae(family),
            "text encoders": nn.ModuleList(fullsize.text_encoders(family))}


def frozen(parts: dict[str, nn.Module]) -> Counts:
    return {name: (count(m.parameters()), False) for name, m in parts.items()}


def instantfamily(cfg, parts: dict[str, nn.Module]) -> Counts:
    """ControlNet + face projector train (+ the UNet, or its cross-attention K/V)."""
    from ldm_ext.adapters.embedding_stack import FaceProjector
    from ldm_ext.face import build_face_encoder

    m, unet = cfg.method, parts["unet"]
    controlnet = fullsize.controlnet(unet)
    face = build_face_encoder(m.face_encoder, weights="random")
    projector = FaceProjector(face.global_dim, face.local_dim, unet.config.cross_attention_dim)
    unet_trains = (unet.parameters() if m.train_unet else
                   [p for n, p in unet.named_parameters()
                    if m.train_unet_kv and (".attn2.to_k." in n or ".attn2.to_v." in n)])
    return {**split("unet", unet, unet_trains, "unet (trained)"), **frozen({"vae": parts["vae"],
            "text encoders": parts["text encoders"], "face encoder": face}),
            "controlnet": (count(controlnet.parameters()), True),
            "face projector": (count(projector.parameters()), True)}


def portraitbooth(cfg, parts: dict[str, nn.Module]) -> Counts:
    """The whole UNet and the STEA MLP train; VAE, text encoder and FaceNet are frozen."""
    from ldm_ext.adapters.stea import STEA
    from ldm_ext.face import build_face_encoder

    m = cfg.method
    block = {} if m.shallow_block == "auto" else {"shallow_block": m.shallow_block}
    face = build_face_encoder(m.face_encoder, weights="random", **block)
    stea = STEA(parts["unet"].config.cross_attention_dim, face.shallow_dim)
    return {**frozen({"vae": parts["vae"], "text encoders": parts["text encoders"],
                      "face encoder": face}),
            "unet": (count(parts["unet"].parameters()), True),
            "stea": (count(stea.parameters()), True)}


def sefi_ide(cfg, parts: dict[str, nn.Module]) -> Counts:
    """The stage-token module trains, all but its word P; the text-to-image model is frozen.
    P is as wide as the text encoders' tokens together (SDXL: 768 + 1280)."""
    from ldm_ext.adapters.stage_tokens import StageTokens

    m = cfg.method
    dim = sum(t.config.hidden_size for t in parts["text encoders"])
    tokens = StageTokens(torch.zeros(dim), m.num_stages, m.width, m.heads, m.ff_mult)
    return {**frozen(parts), **split("stage-token word P", tokens,
                                     [p for p in tokens.parameters() if p is not tokens.word],
                                     "stage tokens")}


def storymaker(cfg, parts: dict[str, nn.Module]) -> Counts:
    """PPR, the decoupled K_i / V_i and the UNet's LoRA train; UNet, VAE, text encoders, pose
    ControlNet, CLIP ViT-H and ArcFace (insightface: buffalo_l's IResNet-50, run by ONNX
    Runtime, counted as that torch IResNet) are frozen."""
    from ldm_ext.adapters.lora import add_lora, lora_modules
    from ldm_ext.attention import decoupled_modules, install_processors
    from ldm_ext.face import build_face_encoder
    from ldm_ext.methods.storymaker import build_ppr

    m, unet = cfg.method, parts["unet"]
    controlnet = fullsize.controlnet(unet) if cfg.model.controlnet else None
    arch = m.face_arch if m.face_encoder == "arcface" else "r50"
    face = build_face_encoder("arcface", weights="random", arch=arch)
    image = fullsize.image_encoder()
    ppr = build_ppr(m, unet.config.cross_attention_dim, image.config.hidden_size,
                    face.global_dim)
    install_processors(unet, decoupled=True)
    if m.lora_rank:
        add_lora(unet, m.lora_rank, list(m.lora_targets), m.lora_layers)
    trains = [*decoupled_modules(unet).parameters(), *lora_modules(unet).parameters()]
    extra = {"pose controlnet": controlnet} if controlnet is not None else {}
    return {**split("unet", unet, trains, "lora + K_i/V_i"),
            **frozen({"vae": parts["vae"], "text encoders": parts["text encoders"], **extra,
                      "image encoder": image, "face encoder": face}),
            "ppr": (count(ppr.parameters()), True)}


METHODS: dict[str, Callable[..., Counts]] = {
    "instantfamily": instantfamily, "portraitbooth": portraitbooth, "sefi_ide": sefi_ide,
    "storymaker": storymaker}


def recipe_counts(cfg) -> Counts:
    """Part -> (parameters, trainable) of recipe ``cfg``, built on the meta device."""
    if cfg.method.name not in METHODS:
        raise ValueError(f"method.name={cfg.method.name}: no parameter plan, only "
                         f"{sorted(METHODS)}")
    with torch.device("meta"):
        return METHODS[cfg.method.name](cfg, backbone(cfg.model.family))
