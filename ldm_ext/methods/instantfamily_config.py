"""InstantFamily's config (docs/methods.md §1), apart from its module so that reading and
checking a config imports no torch (``ldm_ext/registry.py`` resolves it on its own)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ldm_ext.config import Bounds, MethodConfig


@dataclass
class InstantFamilyConfig(MethodConfig):
    """InstantFamily (docs/methods.md §1): face projector + ControlNet with masked attention."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "mask_mode": ("multiply", "hard"),
        "face_encoder": ("facenet", "arcface"),
    }
    RANGES: ClassVar[dict[str, Bounds]] = {"mask_margin": (0, None), "identity_scale": (0, None)}

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
