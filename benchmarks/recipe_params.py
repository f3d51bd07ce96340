"""Exact parameter counts of each method's training recipe, frozen and trainable apart.

Every model is built with its real shape on the meta device (no memory, no weights): SD1.5
(``step_memory.py``'s UNet at width 320, VAE, CLIP ViT-L text encoder) or SDXL base 1.0
(the UNet, VAE and two text encoders of its published configs), the recipe's ControlNet
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

import step_memory  # benchmarks/step_memory.py: the SD1.5-shaped UNet and ControlNet

SD15_WIDTH = 320
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


def sdxl_unet() -> nn.Module:
    """SDXL base 1.0's UNet (its unet/config.json)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        sample_size=128)


def text_encoders(family: str) -> list[nn.Module]:
    """CLIP ViT-L/14's text tower (SD1.5, SDXL's first); SDXL adds OpenCLIP bigG's."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    encoders = [CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu"))]
    if family == "sdxl":
        encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, max_position_embeddings=77, projection_dim=1280,
            hidden_act="gelu")))
    return encoders


def backbone(family: str) -> dict[str, nn.Module]:
    """UNet, VAE and text encoder(s) of ``family`` (same VAE shape in both)."""
    from diffusers import AutoencoderKL

    unet = sdxl_unet() if family == "sdxl" else step_memory.build_models(SD15_WIDTH, "meta")[0]
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2)
    text = nn.ModuleList(text_encoders(family))
    return {"unet": unet, "vae": vae, "text encoders": text}


def frozen(parts: dict[str, nn.Module]) -> Counts:
    return {name: (count(m.parameters()), False) for name, m in parts.items()}


def instantfamily(cfg, parts: dict[str, nn.Module]) -> Counts:
    """ControlNet + face projector train (+ the UNet, or its cross-attention K/V)."""
    from ldm_ext.adapters.embedding_stack import FaceProjector
    from ldm_ext.face import build_face_encoder

    m, unet = cfg.method, parts["unet"]
    controlnet = step_memory.build_models(SD15_WIDTH, "meta")[1]
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


def clip_vit_h() -> nn.Module:
    """CLIP ViT-H/14's image tower with projection (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"))


def storymaker(cfg, parts: dict[str, nn.Module]) -> Counts:
    """PPR, the decoupled K_i / V_i and the UNet's LoRA train; UNet, VAE, text encoders, pose
    ControlNet, CLIP ViT-H and ArcFace (insightface: buffalo_l's IResNet-50, run by ONNX
    Runtime, counted as that torch IResNet) are frozen."""
    from diffusers import ControlNetModel

    from ldm_ext.adapters.lora import add_lora, lora_modules
    from ldm_ext.attention import decoupled_modules, install_processors
    from ldm_ext.face import build_face_encoder
    from ldm_ext.methods.storymaker import build_ppr

    m, unet = cfg.method, parts["unet"]
    controlnet = ControlNetModel.from_unet(unet) if cfg.model.controlnet else None
    arch = m.face_arch if m.face_encoder == "arcface" else "r50"
    face = build_face_encoder("arcface", weights="random", arch=arch)
    image = clip_vit_h()
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
