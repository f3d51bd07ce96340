"""CelebV-Text's info json and text release -> per-clip subject, caption text, cut window
and box (``ClipMeta``), for ``datamodules.prepare videos``.

The info json is ``{clip: {...}}`` (current), ``{"clips": {...}}`` or ``{"clips_set1": {...},
"clips_set2": {...}}`` (older), each entry with ``ytb_id``, ``duration{start_sec,end_sec}``
and a normalised ``bbox{top,bottom,left,right}``; CelebV-HQ-style files add
``"meta_info": {"appearance_mapping": [...]}`` and per clip ``"attributes": {"appearance":
[0/1 ...]}`` (or ``"gender"``), and may carry a ``"text"``. Clip ids are stored without
``.mp4`` suffixes.

The text release is six folders of ``<clip>.txt`` files, several lines each:
``face40_details_new`` (the description, the caption's core), ``emotion``, ``action_dur``
(appended when present, ``extras``), ``light_dir``, ``light_intensity``,
``light_colot_temp``. One line per file is chosen at random, seeded by the clip.

The texts' pronouns are often wrong ("He has a big nose." for a woman), so the subject
(man/woman) is the attributes' gender, else the majority of the description's lines; a
clip whose lines (or lines and attributes) disagree is noted (``subject_lines_disagree``).
"""
from __future__ import annotations

import json
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ldm_ext.cli import InputError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm")
DESCRIPTION = "face40_details_new"
TEXT_FOLDERS = (DESCRIPTION, "emotion", "action_dur", "light_dir", "light_intensity",
                "light_colot_temp")
DEFAULT_EXTRAS = ("emotion", "action_dur")
CLIP_FIELDS = {"ytb_id", "duration", "bbox", "attributes", "version", "text", "caption",
               "gender"}
LAYOUTS = '{clip: {...}}, {"clips": {...}} or {"clips_set1": {...}, "clips_set2": {...}}'
GENDER_WORDS = {"man": "man", "male": "man", "he": "man", "his": "man", "him": "man",
                "boy": "man", "gentleman": "man", "woman": "woman", "female": "woman",
                "she": "woman", "her": "woman", "girl": "woman", "lady": "woman"}


@dataclass(frozen=True)
class ClipMeta:
    """What ``prepare videos`` knows of one clip."""

    subject: str  # "man" | "woman" | "person"
    text: str = ""  # description (+ extras), '' without
    ytb_id: str = ""
    window: tuple[float, float] | None = None  # (start, end) seconds in the raw video
    bbox: tuple[float, float, float, float] | None = None  # top, bottom, left, right
    notes: tuple[str, ...] = ()  # counted in stats.json ("notes")


def load_video_meta(path: str, texts: str | None = None,
                    extras: tuple[str, ...] = DEFAULT_EXTRAS) -> dict[str, ClipMeta]:
    """Clip id -> ``ClipMeta`` from the info json at ``path`` and the text release at
    ``texts`` (its parent folder, or the description folder alone)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the info json {path}: {err}") from None
    entries, mapping = clip_entries(data, path)
    folders = text_folders(texts, extras) if texts else {}
    files = {name: _files_by_clip(folder) for name, folder in folders.items()}
    return {clip: _clip_meta(clip, entry, mapping, files) for clip, entry in entries.items()}


def clip_entries(data, path: str) -> tuple[dict[str, dict], list[str] | None]:
    """(clip id -> entry, appearance mapping) of an info json in any released layout; an
    ``InputError`` naming the key that is not a clip."""
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected {LAYOUTS}, found a JSON {type(data).__name__}")
    mapping = data.get("meta_info", {}).get("appearance_mapping")
    body = {k: v for k, v in data.items() if k != "meta_info"}
    wrappers = [k for k in body if k == "clips" or k.startswith("clips_set")]
    groups = [body[k] for k in wrappers] if wrappers else [body]
    extra = sorted(set(body) - set(wrappers)) if wrappers else []
    if extra:
        raise InputError(f"{path}: unexpected key {extra[0]!r} beside {wrappers[0]!r}; "
                         f"expected {LAYOUTS}")
    entries = {}
    for name, group in zip(wrappers or [None], groups):
        if not isinstance(group, dict):
            raise InputError(f"{path}: {name!r} holds a {type(group).__name__}, not clips")
        for key, entry in group.items():
            if not isinstance(entry, dict) or not CLIP_FIELDS & entry.keys():
                raise InputError(f"{path}: {key!r} is not a clip (no ytb_id, duration, bbox "
                                 f"or attributes); expected {LAYOUTS}")
            entries[clip_id(str(key))] = entry
    if not entries:
        raise InputError(f"{path} holds no clips; expected {LAYOUTS}")
    return entries, [str(m).lower() for m in mapping] if mapping else None


def text_folders(texts: str, extras: tuple[str, ...]) -> dict[str, Path]:
    """Release folder name -> folder for the description and ``extras`` found in ``texts``."""
    root = Path(texts)
    unknown = set(extras) - set(TEXT_FOLDERS)
    if unknown:
        raise InputError(f"unknown text folders {sorted(unknown)}; the release has "
                         f"{', '.join(TEXT_FOLDERS)}")
    if (root / DESCRIPTION).is_dir():
        return {n: root / n for n in (DESCRIPTION, *extras) if (root / n).is_dir()}
    if root.name in TEXT_FOLDERS[1:] or any((root / n).is_dir() for n in TEXT_FOLDERS):
        raise InputError(f"--texts {texts} lacks {DESCRIPTION}/ (the descriptions): pass the "
                         f"folder holding the six text folders")
    if not root.is_dir() or not any(root.rglob("*.txt")):
        raise InputError(f"--texts {texts} holds no {DESCRIPTION}/ and no .txt files")
    return {DESCRIPTION: root}  # the description folder itself


def clip_id(name: str) -> str:
    """A clip's id: its file name with every video suffix removed (``a_0.mp4.mp4`` -> ``a_0``)."""
    stem = Path(name).name
    while Path(stem).suffix.lower() in VIDEO_SUFFIXES:
        stem = stem[:-len(Path(stem).suffix)]
    return stem


def _files_by_clip(folder: Path) -> dict[str, Path]:
    return {clip_id(p.name[:-len(".txt")]): p for p in folder.rglob("*.txt")}


def _lines(path: Path | None) -> list[str]:
    if path is None:
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _clip_meta(clip: str, entry: dict, mapping: list[str] | None,
               files: dict[str, dict[str, Path]]) -> ClipMeta:
    inline = str(entry.get("text") or entry.get("caption") or "")
    lines = [inline] if inline else _lines(files.get(DESCRIPTION, {}).get(clip))
    label, votes = _gender(entry, mapping), [_gender_in_text(line) for line in lines]
    said = Counter(v for v in [*votes, label] if v)
    subject = label or _majority(Counter(v for v in votes if v))
    notes = ("subject_lines_disagree",) if len(said) > 1 else ()
    agree = [line for line, vote in zip(lines, votes) if vote in (None, subject)] or lines
    parts = [_pick(agree, clip, DESCRIPTION)] if agree else []
    parts += [_pick(_lines(f.get(clip)), clip, name) for name, f in files.items()
              if name != DESCRIPTION and f.get(clip)]
    if files and not lines:
        notes += ("no_description",)
    duration, bbox = entry.get("duration") or {}, entry.get("bbox") or {}
    window = (float(duration["start_sec"]), float(duration["end_sec"])) \
        if {"start_sec", "end_sec"} <= duration.keys() else None
    box = tuple(float(bbox[k]) for k in ("top", "bottom", "left", "right")) \
        if {"top", "bottom", "left", "right"} <= bbox.keys() else None
    return ClipMeta(subject, " ".join(p for p in parts if p), str(entry.get("ytb_id", "")),
                    window, box, notes)


def _majority(votes: Counter) -> str:
    """The word most lines say, "person" on a tie or without any."""
    ranked = votes.most_common(2) + [(None, 0)] * 2
    return ranked[0][0] if ranked[0][1] > ranked[1][1] else "person"


def _pick(lines: list[str], clip: str, folder: str) -> str:
    """One of ``lines``, the same for a clip and folder in every run ('' without lines)."""
    return random.Random(zlib.crc32(f"{clip}/{folder}".encode())).choice(lines) if lines else ""


def _gender(entry: dict, mapping: list[str] | None) -> str | None:
    """"man" / "woman" from a clip's attributes, or None when they do not say."""
    attributes = entry.get("attributes", entry)
    for key in ("gender", "sex"):
        value = str(attributes.get(key, "")).lower()
        if value in ("male", "man", "m"):
            return "man"
        if value in ("female", "woman", "f"):
            return "woman"
    appearance = attributes.get("appearance")
    if mapping and isinstance(appearance, list) and len(appearance) == len(mapping) \
            and "male" in mapping:
        return "man" if appearance[mapping.index("male")] else "woman"
    return None


def _gender_in_text(text: str) -> str | None:
    """"man" / "woman" from the first gendered word of a line, or None."""
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in GENDER_WORDS:
            return GENDER_WORDS[word]
    return None


def video_caption(meta: ClipMeta) -> str:
    """Caption naming the subject as man/woman (PortraitBooth); the clip's text follows
    when there is one (first letter lowered: it continues the sentence)."""
    text = meta.text.strip()
    return f"a photo of a {meta.subject}" + (f", {text[:1].lower()}{text[1:]}" if text else "")
