"""Where words of a prompt land in its 77 CLIP tokens, through the real tokenizer.

A word may be split into several BPE pieces ("fearful" -> "fear", "ful</w>"), a prompt may
name several subjects ("a man and a woman") or none of the words; words match whole and
case-insensitively ("policewoman" holds no "woman", "Woman," does). Positions count the
start token, as the text encoder's output does; pieces cut off by the 77-token limit are
dropped, and an occurrence with no piece left is dropped too.
"""
from __future__ import annotations

import re
from typing import Sequence

Positions = list[int]  # token indices of one word occurrence


def word_spans(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) character spans of every whole-word occurrence of ``words``, in order."""
    if not words:
        return []
    pattern = r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len,
                                                                reverse=True)) + r")\b"
    return [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


def _tokens_in(span: tuple[int, int], offsets: Sequence[tuple[int, int]]) -> Positions:
    """Indices of the tokens whose character range overlaps ``span`` (specials have none)."""
    start, end = span
    return [k for k, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


def word_positions(tokenizer, prompts: Sequence[str], words: Sequence[str],
                   max_length: int | None = None) -> list[list[Positions]]:
    """Per prompt, per occurrence of any of ``words`` (in prompt order), its token indices
    in the padded ``max_length`` (default: the tokenizer's, 77) sequence. Needs a fast
    tokenizer (character offsets), which ``ldm_ext.backbone`` loads."""
    length = max_length or tokenizer.model_max_length
    encoded = tokenizer(list(prompts), padding="max_length", max_length=length,
                        truncation=True, return_offsets_mapping=True)
    found = []
    for text, offsets in zip(prompts, encoded["offset_mapping"]):
        occurrences = [_tokens_in(span, offsets) for span in word_spans(text, words)]
        found.append([tokens for tokens in occurrences if tokens])
    return found
