"""StoryMaker's config (docs/methods.md §3), apart from its module so that reading and checking a
config imports no torch. Defaults are the official recipe (RedAIGC/StoryMaker, what made the
released weights); ``configs/experiment/storymaker_sdxl_paper.yaml`` flips the paper's."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ldm_ext.cli import InputError
from ldm_ext.config import Bounds, MethodConfig
from ldm_ext.pipelines.options import (Inputs, Option, check_photo_count, check_photo_options,
                                       existing_path, photo, photo_options)
from ldm_ext.perception.pose.names import POSE_FORMATS


def check_generation_inputs(values: dict, cfg) -> None:
    """--num-ids with --group, --masks with --ids (one per photo); at most
    ``method.max_characters`` characters; a pose only for a run with a ControlNet."""
    check_photo_options(values, "character")
    masks, photos = values["masks"], values["photos"]
    if masks and not photos:
        raise InputError("--masks goes with --ids (one mask per photo)")
    if masks and len(masks) != len(photos):
        raise InputError(f"{len(masks)} --masks for {len(photos)} --ids photos")
    check_photo_count(values, "character", cfg.method.max_characters, "method.max_characters")
    if values["pose"] is not None and not cfg.model.controlnet:
        raise InputError(f"--pose {values['pose']}: this run has no ControlNet "
                         "(model.controlnet: a pretrained OpenPose ControlNet)")


@dataclass
class StoryMakerConfig(MethodConfig):
    """StoryMaker: PPR image tokens (Eq. 4-7) through decoupled cross-attention (Eq. 3) with
    LoRA (Eq. 8), attention loss against character masks (Eq. 9-12)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "face_encoder": ("insightface", "arcface"),
        "lora_layers": ("all", "cross"),
        "id_loss_arch": ("r18", "r34", "r50", "r100", "r200"),
        "attn_loss_layers": ("lowest", "all"),
        "attn_loss_form": ("official", "paper"),
    }
    RANGES: ClassVar[dict[str, Bounds]] = {
        "num_slots": (1, None), "max_characters": (1, None), "face_tokens": (1, None),
        "face_perceiver_depth": (1, None), "face_shortcut_scale": (0, None),
        "resampler_dim": (1, None), "resampler_depth": (1, None), "resampler_heads": (1, None),
        "resampler_dim_head": (1, None), "character_tokens": (1, None), "lora_rank": (0, None),
        "attn_loss_weight": (0, None), "person_loss_weight": (0, None),
        "drop_characters": (0, 1), "drop_both": (0, 1), "drop_face_tokens": (0, 1),
        "drop_character_tokens": (0, 1), "ip_scale": (0, None), "lora_scale": (0, None),
        "id_loss_weight": (0, None), "id_loss_max_timestep": (0, None),
        "id_loss_window_margin": (0, None),
    }
    GENERATION_INPUTS: ClassVar[Inputs] = Inputs(
        options=(*photo_options("character"),
                 Option("masks", "with --ids: one character mask image per photo (white = "
                        "the person); default: segmented", many=True, value_check=photo,
                        metavar="MASK"),
                 Option("pose", f"pose for the pose ControlNet: {POSE_FORMATS}",
                        value_check=existing_path, metavar="JSON"),
                 Option("zero_character", "identity only: the character tokens set to zero "
                        "(Fig. 4)", switch=True),
                 Option("ip_scale", "γ (Eq. 3; default method.ip_scale)", type=float),
                 Option("lora_scale", "LoRA scale (default method.lora_scale)", type=float)),
        required=("identities",), check=check_generation_inputs)
    # every released section lands in ppr / ip_kv / lora, which the run saves; the ID loss's
    # ArcFace only scores training
    TRAINING_ONLY: ClassVar[dict[str, Any]] = {
        "faceid_weights": None, "plus_weights": None, "storymaker_weights": None,
        "id_loss_weight": 0.0}

    name: str = "storymaker"
    lr: float = 1e-4
    num_slots: int = 2  # character slots per training sample (<= max_characters)
    # frozen encoders: ArcFace identity (insightface buffalo_l ONNX, or a torch IResNet:
    # arcface + face_arch + face_weights = backbone.pth | random) and CLIP ViT-H/14
    face_encoder: str = "insightface"
    face_weights: str | None = None  # insightface: the .onnx (default ~/.insightface buffalo_l)
    face_arch: str = "r100"  # arcface only: IResNet depth of face_weights
    image_encoder: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # or a folder, or "tiny"
    # PPR (Eq. 4-7): R1 face tokens, R2 character resampler, positions, background
    face_tokens: int = 4
    face_perceiver_depth: int = 4
    face_shortcut_scale: float = 1.0  # s of E1 = x + s * perceiver(x) (FaceID-PlusV2)
    resampler_dim: int = 1280
    resampler_depth: int = 4
    resampler_heads: int = 20
    resampler_dim_head: int = 64
    character_tokens: int = 16
    max_characters: int = 3  # rows of E_pos
    # released initialisation (paths; released.py maps their keys): FaceID-PlusV2 (its
    # sections: image_proj -> R1, ip_adapter -> LoRA + K_i/V_i), IP-Adapter-Plus ViT-H
    # (image_proj -> R2), StoryMaker's own weights (everything; overrides both)
    faceid_weights: str | None = None
    faceid_sections: list[str] = field(default_factory=lambda: ["image_proj", "ip_adapter"])
    plus_weights: str | None = None
    storymaker_weights: str | None = None
    # LoRA through peft (Eq. 8): official to_q/k/v/out of every attention layer (all);
    # the paper's W_q, W_k^t, W_v^t of the cross-attention layers (cross, three targets)
    lora_rank: int = 128  # 0: no LoRA
    lora_layers: str = "all"  # all (attn1 + attn2) | cross (attn2)
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # losses: L = L_SD(weighted) + λ L_attn (Eq. 12)
    attn_loss_weight: float = 0.1  # λ; 0 turns the loss (and the maps) off
    attn_loss_layers: str = "lowest"  # lowest-resolution cross-attention layers | all
    # official: maps averaged over layers, (Σ_k MSE_k + MSE_bg) / N; paper: Eq. 11 per
    # layer, 1/(N+1) Σ, averaged over the M layers (Eq. 12)
    attn_loss_form: str = "official"
    person_loss_weight: float = 5.0  # noise MSE weighted by 1 + w * person mask (0: plain)
    # optional ID loss (the paper names one; the official code has it off): PortraitBooth's
    # DIP with ArcFace, 1 - cos(ArcFace(aligned reference), ArcFace(face box of x̂0)) for
    # t <= id_loss_max_timestep. Needs a differentiable ArcFace: a torch IResNet of
    # id_loss_arch with id_loss_weights (arcface_torch backbone.pth, or "random" for tests)
    id_loss_weight: float = 0.0  # 0: off, nothing decoded
    id_loss_max_timestep: int = 250
    id_loss_weights: str | None = None
    id_loss_arch: str = "r100"
    id_loss_window_margin: int = 4  # latents of context decoded around each face box
    # drops per sample (one draw: characters | text | both; text = empty_prompt_prob), and
    # the released projector's own token drops (E1 = 0 / E2 = 0, each independently)
    empty_prompt_prob: float = 0.2
    drop_characters: float = 0.05
    drop_both: float = 0.05
    drop_face_tokens: float = 0.1
    drop_character_tokens: float = 0.1
    # inference (infer.py): image scale gamma (Eq. 3) and LoRA scale
    ip_scale: float = 0.8
    lora_scale: float = 0.8
    sample_num_ids: list[int] = field(default_factory=lambda: [1, 2])
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a photo of people walking in a park"])
    sample_steps: int = 25
    guidance_scale: float = 7.5
    sampler: str = "unipc"

    @classmethod
    def identity_encoder(cls, method) -> str | None:
        """ArcFace as configured: insightface's ONNX (buffalo_l unless ``face_weights``
        names another .onnx) or a torch IResNet of depth ``face_arch``."""
        if method.face_encoder == "arcface":
            return f"arcface-{method.face_arch}/{method.face_weights}"
        return f"insightface/{method.face_weights or 'buffalo_l'}"

    @classmethod
    def published_shapes(cls, method) -> dict[str, Any]:
        """ArcFace as a random torch IResNet (insightface: buffalo_l's recogniser is an
        IResNet-50, run by ONNX Runtime), CLIP ViT-H/14 random, no released checkpoints."""
        arch = method.face_arch if method.face_encoder == "arcface" else "r50"
        return {"face_encoder": "arcface", "face_arch": arch, "face_weights": "random",
                "image_encoder": "published", "id_loss_weights": "random",
                "faceid_weights": None, "plus_weights": None, "storymaker_weights": None}

    @classmethod
    def scoring_encoder(cls, method) -> tuple[str, str | None]:
        """Scored with the ArcFace it conditions on, as configured (insightface: its
        default buffalo_l when ``face_weights`` is null)."""
        return method.face_encoder, method.face_weights
