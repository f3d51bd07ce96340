"""The evaluation protocols' prompt lists (``configs/prompts.yaml``: FastComposer's verbatim
from its paper, and each paper's own) and the subject phrases filled into them.

Single-subject templates use ``{s}`` (e.g. ``man img``), multi-subject ones ``{S}``
(``man img and a woman img``). For generation the class word carries the method's
identity marker; for the CLIP text score the marker is removed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from omegaconf import OmegaConf

from ldm_ext.config_layers import CONFIG_ROOT, load_yaml

PROMPTS = CONFIG_ROOT / "prompts.yaml"


@lru_cache(maxsize=1)
def prompt_sets() -> dict[str, dict[str, list[str]]]:
    """The protocols' prompt sets (``configs/prompts.yaml``): set -> category -> templates,
    in protocol order. Data, not code: a protocol adds its set there."""
    return OmegaConf.to_container(load_yaml(PROMPTS), resolve=False)


@dataclass(frozen=True)
class Prompt:
    """One protocol prompt: its index in the set, category and template."""

    index: int
    category: str
    template: str


def prompt_list(name: str, limit: int | None = None) -> list[Prompt]:
    """Prompts of set ``name`` in protocol order (categories as listed), first ``limit``."""
    sets = prompt_sets()
    if name not in sets:
        raise ValueError(f"unknown prompt set {name!r} (known: {sorted(sets)})")
    flat = [(cat, t) for cat, templates in sets[name].items() for t in templates]
    return [Prompt(i, cat, t) for i, (cat, t) in enumerate(flat[:limit])]


def subject_phrase(class_words: list[str], marker: str = "") -> str:
    """``man img`` or, for several subjects, ``man img and a woman img``; no marker: ``man``."""
    words = [f"{word} {marker}".strip() for word in class_words]
    return " and a ".join(words)


def fill(template: str, class_words: list[str], marker: str = "") -> str:
    """The template with its subject slot ({s} or {S}) filled."""
    return template.replace("{s}", "{S}").replace("{S}", subject_phrase(class_words, marker))
