"""SeFi-IDE's config (docs/methods.md §2), apart from its module so that reading and checking a
config imports no torch (``ldm_ext/registry.py`` resolves it on its own)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ldm_ext.config import Bounds, MethodConfig
from ldm_ext.pipelines.options import Inputs, Option, existing_path


def named_identity(value: str, label: str) -> None:
    """An ``--identity`` value, ``[NAME=]FILE``: FILE exists (a fit's run folder or its
    trainable.safetensors; what it holds is checked once the model is loaded)."""
    name, sep, path = str(value).partition("=")
    existing_path(path if sep else name, label)


@dataclass
class SeFiIDEConfig(MethodConfig):
    """SeFi-IDE (docs/methods.md §2): one identity fitted from one photo, the model frozen.

    The training prompt is the batch caption (``data.kind=single_image``: "a photo of the
    face of V*", the paper's target prompt y_t); the reference prompt y_r is that caption
    with ``V*`` replaced by ``initializer`` (Sec. III-B)."""

    RANGES: ClassVar[dict[str, Bounds]] = {
        "num_stages": (1, None), "width": (1, None), "heads": (1, None), "ff_mult": (1, None),
        "attention_loss_weight": (0, None), "attention_map_size": (1, None),
    }
    GENERATION_INPUTS: ClassVar[Inputs] = Inputs(options=(Option(
        "identities", "a fitted identity (ldm_ext.fit's run folder or its "
        "trainable.safetensors); repeat for several: the first is V1* in the prompt, the "
        "second V2*, ... (default: the --run's own identity, V*)", flag="--identity",
        repeat=True, value_check=named_identity, metavar="[NAME=]FILE"),))

    name: str = "sefi_ide"
    optimizer: str = "adam"  # Sec. IV-A: Adam, lr 0.005
    lr: float = 5.0e-3
    weight_decay: float = 0.0
    num_slots: int = 1  # one identity per fitting
    initializer: str = "person"  # P's word and the reference prompt's (y_r) word
    num_stages: int = 5  # (key, value) token pairs, one per fifth of the timesteps
    width: int = 768  # inner width of the stage-token module
    heads: int = 8
    ff_mult: int = 4  # feed-forward hidden width / width
    attention_loss_weight: float = 0.003  # lambda of Eq. 6
    attention_map_size: int = 32  # maps resized to this side (Alg. 1)
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a photo of the face of V*", "a photo of V* on the beach"])
    sample_num_ids: list[int] = field(default_factory=lambda: [1])
