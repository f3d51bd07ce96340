"""The FastComposer protocol's prompt lists, verbatim from its paper, and the subject
phrases filled into them.

Single-subject templates use ``{s}`` (e.g. ``man img``), multi-subject ones ``{S}``
(``man img and a woman img``). For generation the class word carries the method's
identity marker; for the CLIP text score the marker is removed.
"""
from __future__ import annotations

from dataclasses import dataclass

SINGLE_PROMPTS: dict[str, list[str]] = {
    "accessory": [
        "a {s} wearing a red hat", "a {s} wearing a santa hat",
        "a {s} wearing a rainbow scarf", "a {s} wearing a black top hat and a monocle",
        "a {s} in a chef outfit", "a {s} in a firefighter outfit", "a {s} in a police outfit",
        "a {s} wearing pink glasses", "a {s} wearing a yellow shirt",
        "a {s} in a purple wizard outfit",
    ],
    "style": [
        "a painting of a {s} in the style of Banksy",
        "a painting of a {s} in the style of Vincent Van Gogh",
        "a colorful graffiti painting of a {s}", "a watercolor painting of a {s}",
        "a Greek marble sculpture of a {s}", "a street art mural of a {s}",
        "a black and white photograph of a {s}", "a pointillism painting of a {s}",
        "a Japanese woodblock print of a {s}", "a street art stencil of a {s}",
    ],
    "action": [
        "a {s} riding a horse", "a {s} holding a glass of wine",
        "a {s} holding a piece of cake", "a {s} giving a lecture", "a {s} reading a book",
        "a {s} gardening in the backyard", "a {s} cooking a meal",
        "a {s} working out at the gym", "a {s} walking the dog", "a {s} baking cookies",
    ],
    "context": [
        "a {s} in the jungle", "a {s} in the snow", "a {s} on the beach",
        "a {s} on a cobblestone street", "a {s} on top of pink fabric",
        "a {s} on top of a wooden floor", "a {s} with a city in the background",
        "a {s} with a mountain in the background", "a {s} with a blue house in the background",
        "a {s} on top of a purple rug in a forest",
    ],
}

MULTI_PROMPTS: dict[str, list[str]] = {
    "style": [
        "a painting of a {S} together in the style of Banksy",
        "a painting of a {S} together in the style of Vincent Van Gogh",
        "a watercolor painting of a {S} together", "a street art mural of a {S} together",
        "a black and white photograph of a {S} together",
        "a pointillism painting of a {S} together", "a Japanese woodblock print of a {S} together",
    ],
    "action": [
        "a photo of a {S} gardening in the backyard together",
        "a photo of a {S} cooking a meal together", "a photo of a {S} sitting in a park together",
        "a photo of a {S} working out at the gym together",
        "a photo of a {S} baking cookies together", "a photo of a {S} posing for a selfie together",
        "a photo of a {S} making funny faces for a photo booth together",
        "a photo of a {S} playing a musical duet together",
    ],
    "context": [
        "a photo of a {S} together in the jungle", "a photo of a {S} together in the snow",
        "a photo of a {S} together on the beach",
        "a photo of a {S} together with a city in the background",
        "a photo of a {S} together with a mountain in the background",
        "a photo of a {S} together with a blue house in the background",
    ],
}

# FastComposer's 15 CelebA test subjects and their class words (docs/benchmark.md,
# "Subject folders").
FASTCOMPOSER_CLASSES = {
    "000001": "man", "000181": "man", "000268": "man", "000612": "woman", "000667": "woman",
    "001603": "woman", "001854": "man", "002088": "woman", "002464": "woman",
    "002782": "man", "002880": "woman", "002929": "woman", "002937": "woman",
    "003785": "man", "004153": "woman",
}

# SeFi-IDE's *ID(F) / *Detect(F): identity on face photos, "a photo of the face of V*"
FACE_PHOTO_PROMPTS: dict[str, list[str]] = {"face": ["a photo of the face of a {s}"]}

# PortraitBooth's expression editing (Sec. 5.4): per subject, 11 prompts with an emotion
# word each (the paper does not list its prompts; the words are docs/methods.md §4's), one
# category per word, scored by the expression coefficient (``scoring.emotions``)
EXPRESSION_PROMPTS: dict[str, list[str]] = {
    "happy": ["a photo of a happy {s}"], "sad": ["a photo of a sad {s}"],
    "angry": ["a photo of an angry {s}"], "surprised": ["a photo of a surprised {s}"],
    "disgusted": ["a photo of a disgusted {s}"], "fearful": ["a photo of a fearful {s}"],
    "smiling": ["a photo of a smiling {s}"], "laughing": ["a photo of a laughing {s}"],
    "crying": ["a photo of a crying {s}"], "serious": ["a photo of a serious {s}"],
    "neutral": ["a photo of a neutral {s}"],
}

PROMPT_SETS = {"fastcomposer_single": SINGLE_PROMPTS, "fastcomposer_multi": MULTI_PROMPTS,
               "face_photo": FACE_PHOTO_PROMPTS, "expression": EXPRESSION_PROMPTS}


@dataclass(frozen=True)
class Prompt:
    """One protocol prompt: its index in the set, category and template."""

    index: int
    category: str
    template: str


def prompt_list(name: str, limit: int | None = None) -> list[Prompt]:
    """Prompts of set ``name`` in protocol order (categories as listed), first ``limit``.

    "storymaker" is FastComposer's first 20 single prompts (accessory + style, docs/methods.md
    §3 Decision)."""
    if name == "storymaker":
        return prompt_list("fastcomposer_single", 20 if limit is None else min(limit, 20))
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r} (known: {sorted(PROMPT_SETS)}, "
                         "storymaker)")
    flat = [(cat, t) for cat, templates in PROMPT_SETS[name].items() for t in templates]
    return [Prompt(i, cat, t) for i, (cat, t) in enumerate(flat[:limit])]


def subject_phrase(class_words: list[str], marker: str = "") -> str:
    """``man img`` or, for several subjects, ``man img and a woman img``; no marker: ``man``."""
    words = [f"{word} {marker}".strip() for word in class_words]
    return " and a ".join(words)


def fill(template: str, class_words: list[str], marker: str = "") -> str:
    """The template with its subject slot ({s} or {S}) filled."""
    return template.replace("{s}", "{S}").replace("{S}", subject_phrase(class_words, marker))
