"""Oversampling by the number of faces: a webdataset stage that yields a raw tar sample
``factors[n]`` times when it holds ``n`` faces (1 for counts not in ``factors``).

It runs on the raw samples, before the shuffle buffer, so that the repeats are spread over
the stream as the official StoryMaker trainer's repeated index list is shuffled (two-person
images 2x, three-person 5x; docs/methods.md §3), and each repeat gets its own position and
hence its own per-sample randomness (crop, flip, character order, rotation). The repeats
share their bytes: the buffer holds references, not copies. A repeat carries ``REPEAT``
(its index, from 1), so that a corrupt sample is counted once, not once per repeat
(``datamodules.shards``).

The face count comes from ``faces.json`` (the number of boxes); a sample whose json does
not parse passes once and is skipped and counted by the decoder as before.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import orjson

REPEAT = "__repeat__"  # raw-sample field: which repeat this is (absent on the first)


def check_factors(factors: Mapping[int, int] | None) -> dict[int, int]:
    """``factors`` as ``{faces: repeats}`` with int keys >= 0 and int repeats >= 1; a
    one-line ``ValueError`` naming the bad entry otherwise."""
    checked = {}
    for faces, repeats in (factors or {}).items():
        try:
            faces_n, repeats_n = int(faces), int(repeats)
        except (TypeError, ValueError):
            raise ValueError(f"oversample entry {faces!r}: {repeats!r} is not "
                             f"faces: repeats (integers)") from None
        if faces_n < 0 or repeats_n < 1 or faces_n != faces or repeats_n != repeats:
            raise ValueError(f"oversample entry {faces!r}: {repeats!r} must map a face count "
                             f">= 0 to a whole number of repeats >= 1")
        checked[faces_n] = repeats_n
    return checked


def face_count(raw: dict) -> int | None:
    """Faces of a raw sample (boxes in ``faces.json``), None when that does not parse."""
    try:
        return len(orjson.loads(raw["faces.json"])["boxes"])
    except (KeyError, TypeError, orjson.JSONDecodeError):
        return None


def oversample(samples: Iterator[dict], factors: Mapping[int, int]) -> Iterator[dict]:
    """Each raw sample ``factors.get(faces, 1)`` times in a row (a shuffle should follow):
    itself, then shallow copies marked with ``REPEAT``."""
    for raw in samples:
        yield raw
        for repeat in range(1, factors.get(face_count(raw), 1)):
            yield {**raw, REPEAT: repeat}
