"""InstantFamily's config (docs/methods.md §1), apart from its module so that reading and
checking a config imports no torch (``ldm_ext/registry.py`` resolves it on its own)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ldm_ext.cli import InputError
from ldm_ext.config import Bounds, MethodConfig
from ldm_ext.methods.face_encoder_hooks import FaceEncoderHooks
from ldm_ext.pipelines.options import (Inputs, Option, check_photo_options, existing_path,
                                       photo, photo_options)
from ldm_ext.perception.pose.names import (ANNOTATOR_FILES, DEFAULT_POSE_WEIGHTS, POSE_FORMATS,
                                           check_pose_weights, download_command)


def check_generation_inputs(values: dict, cfg) -> None:
    """--num-ids goes with --group (any number of identities works: Sec. 3.5);
    --pose-weights with --pose-image."""
    check_photo_options(values, "identity")
    if values["pose_weights"] is not None and values["pose_image"] is None:
        raise InputError("--pose-weights goes with --pose-image (the annotator that "
                         "estimates the pose)")


@dataclass
class InstantFamilyConfig(FaceEncoderHooks, MethodConfig):
    """InstantFamily (docs/methods.md §1): face projector + ControlNet with masked attention."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "mask_mode": ("multiply", "hard"),
        "face_encoder": ("facenet", "arcface"),
    }
    RANGES: ClassVar[dict[str, Bounds]] = {"mask_margin": (0, None), "identity_scale": (0, None)}
    GENERATION_INPUTS: ClassVar[Inputs] = Inputs(
        options=(*photo_options("identity"),
                 Option("pose", f"pose template: {POSE_FORMATS} (default: side by side)",
                        value_check=existing_path, group="pose", metavar="JSON"),
                 Option("pose_image", "photo to estimate the pose template from "
                        "(controlnet_aux's OpenPose; weights: --pose-weights)",
                        value_check=photo, group="pose", metavar="PHOTO"),
                 Option("pose_weights", "with --pose-image: folder of the OpenPose weights "
                        f"({', '.join(ANNOTATOR_FILES)}; `{download_command()}`); default: "
                        f"the hub's {DEFAULT_POSE_WEIGHTS} (downloaded to the Hugging Face "
                        "cache when online)", value_check=check_pose_weights, metavar="DIR")),
        required=("identities",), check=check_generation_inputs)

    name: str = "instantfamily"
    face_encoder: str = "facenet"  # facenet | arcface
    face_weights: str = "vggface2"  # name, state-dict path, or "random" (offline demo only)
    mask_mode: str = "multiply"  # multiply (Eq. 6 literally) | hard (-inf)
    mask_margin: float = 0.25  # face box enlargement for the attention masks
    empty_prompt_prob: float = 0.5  # Sec. 4.3
    train_unet_kv: bool = False  # also train the UNet's cross-attention to_k / to_v
    # also train the whole UNet (K/V included): for a random backbone such as the demo's,
    # where a frozen UNet leaves the samples noise; the paper keeps SD's UNet frozen
    train_unet: bool = False
    # identity guidance: the unconditional branch also drops the faces (their tokens and
    # masks), so CFG pushes towards the identities, not only towards the prompt; at
    # identity_scale s > 0 a third branch (faces, no text) separates the two scales:
    # eps = eps_u + g (eps_c - eps_f) + s (eps_f - eps_u) (s = 0: the paper's 2-branch CFG)
    identity_guidance: bool = False
    identity_scale: float = 0.0
