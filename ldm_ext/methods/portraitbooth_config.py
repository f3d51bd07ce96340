"""PortraitBooth's config (docs/methods.md §4), apart from its module so that reading and
checking a config imports no torch (``ldm_ext/registry.py`` resolves it on its own)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ldm_ext.config import Bounds, MethodConfig
from ldm_ext.methods.face_encoder_hooks import FaceEncoderHooks
from ldm_ext.pipelines.options import Inputs, Option, existing_path, photo
from ldm_ext.perception.pose.names import POSE_FORMATS

# Sec. 5.1 names "happy, angry, sad, etc."; docs/methods.md §4 Decision completes the eleven.
EMOTION_WORDS = ["happy", "sad", "angry", "surprised", "disgusted", "fearful", "smiling",
                 "laughing", "crying", "serious", "neutral"]


@dataclass
class PortraitBoothConfig(FaceEncoderHooks, MethodConfig):
    """PortraitBooth (docs/methods.md §4): STEA (Eq. 4), DIP (Eq. 5-6), ECAC (Eq. 7), Eq. 8.

    The UNet and the STEA MLP train. Per sample: ``empty_prompt_prob`` unconditional
    (empty caption), ``text_only_prob`` text-only (identity tokens left as text), the rest
    fully conditioned; independently, ``face_loss_prob`` of the samples have their noise
    loss restricted to the face mask (Sec. 5.1)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "face_encoder": ("facenet", "arcface"),  # differentiable: DIP backpropagates through it
        "id_features": ("global", "shallow"),
        "dip_decode": ("window", "full"),
        "ecac_empty_mask": ("skip", "paper"),
    }
    RANGES: ClassVar[dict[str, Bounds]] = {
        "text_only_prob": (0, 1), "face_loss_prob": (0, 1), "dip_max_timestep": (0, None),
        "id_weight": (0, None), "loc_identity_weight": (0, None),
        "loc_expression_weight": (0, None), "identity_cap": (0, 1), "expression_cap": (0, 1),
        "attention_size": (1, None), "dip_window_margin": (0, None),
        "region_margin": (0, 1),
    }
    GENERATION_INPUTS: ClassVar[Inputs] = Inputs(
        options=(Option("photos", "one photo per subject (largest face); the k-th identity "
                        "word of --prompt (man / woman / person) takes the k-th", flag="--ids",
                        many=True, value_check=photo, metavar="PHOTO"),
                 Option("layout", 'regions JSON {"regions": [[x0, y0, x1, y1], ...]} in '
                        "[0, 1], one per subject (default: side by side)",
                        value_check=existing_path, group="regions", metavar="JSON"),
                 Option("pose", f"pose template ({POSE_FORMATS}): its people's keypoint "
                        "boxes are the regions", value_check=existing_path, group="regions",
                        metavar="JSON")),
        required=("photos",))

    name: str = "portraitbooth"
    lr: float = 1e-5  # constant (Sec. 5.1)
    num_slots: int = 1  # the paper trains single-subject images
    face_encoder: str = "facenet"  # phi (TFace in the paper; docs/methods.md §4 Decision)
    face_weights: str = "vggface2"  # name, state-dict path, or "random" (offline demo only)
    # STEA's phi: pooled output of this early block; auto: the encoder's own default
    # (FaceNet mixed_6a, 896-d; ArcFace layer2), so face_encoder=arcface needs no second key
    shallow_block: str = "auto"
    # STEA (Eq. 4): words whose tokens are augmented, k-th occurrence <- k-th subject
    identity_words: list[str] = field(default_factory=lambda: ["man", "woman", "person"])
    emotion_words: list[str] = field(default_factory=lambda: list(EMOTION_WORDS))  # ECAC j
    empty_prompt_prob: float = 0.1  # unconditional samples (Sec. 5.1)
    text_only_prob: float = 0.1  # text-only samples: no face features (Sec. 5.1)
    face_loss_prob: float = 0.5  # noise loss only inside the face mask (Sec. 5.1)
    # DIP (Eq. 5-6): identity loss for t <= R_t through the VAE decoder and the face encoder
    dip_max_timestep: int = 250  # R_t
    id_weight: float = 1.0  # Eq. 8 sums the three losses; 0 switches DIP off
    id_features: str = "global"  # phi of Eq. 6: the recognition embedding (Decision)
    dip_decode: str = "window"  # window: decode the face box + margin only; full: all
    dip_window_margin: int = 4  # latent pixels of context around the box (window decode)
    # ECAC (Eq. 7); 0 for both weights switches it off (no maps are materialised)
    loc_identity_weight: float = 0.001  # lambda
    loc_expression_weight: float = 0.01  # mu
    identity_cap: float = 0.5  # beta (docs/methods.md Decision; the paper's Sec. 5.5 picks 0.8)
    expression_cap: float = 0.5  # gamma (docs/methods.md Decision; the paper's Sec. 5.5: 0.1)
    # a valid face whose parsing mask is empty (a parsing failure): skip adds nothing for
    # its tokens (counted, train/ecac_empty_masks); paper applies Eq. 7 as written, whose
    # outside term alone pushes the token's attention towards 0 everywhere
    ecac_empty_mask: str = "skip"
    attention_size: int = 32  # side the cross-attention maps and the mask are compared at
    # inference (Sec. 5.1): Euler, 50 steps, CFG 5; several subjects: region composition
    sampler: str = "euler"
    sample_steps: int = 50
    guidance_scale: float = 5.0
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a photo of a happy person and a sad person in a park"])
    sample_num_ids: list[int] = field(default_factory=lambda: [1, 2])
    region_margin: float = 0.1  # pose-template regions: keypoint box + this x image side
