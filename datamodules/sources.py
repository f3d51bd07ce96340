"""Raw inputs of ``datamodules.prepare``, cut into tasks (one task = one output shard).

- a folder of images (``*.jpg|jpeg|png|webp``, caption in ``<stem>.txt`` beside it);
- a LAION-style parquet written by img2dataset with ``output_format=parquet`` (image bytes
  in ``jpg``, caption in ``caption`` or ``txt``, ``key``), read with pyarrow;
- img2dataset's webdataset output (``.tar`` shards with ``jpg``/``png`` + ``txt``): one task
  per input shard;
- CelebV-Text clips (``*.mp4`` in a folder) with their attributes in a json (``videos``).
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import webdataset as wds
from PIL import Image

from datamodules.schema import MAX_PIXELS
from datamodules.annotate import Rejected

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm")
MAX_KEY_BYTES = 200  # a key names files (previews, tar members): well under NAME_MAX (255)


@dataclass(frozen=True)
class Task:
    """One output shard: ``kind`` folder | parquet | tar | video, its ``source`` (the input)
    and ``items``, the inputs it reads: file paths for folder/video, input tar paths for
    tar, ``(start, stop)`` row ranges for parquet (``input_name`` names each)."""

    index: int
    kind: str
    source: str
    items: tuple = ()


def _chunks(items: list, size: int) -> list[tuple]:
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def plan_images(input_path: str, samples_per_shard: int) -> list[Task]:
    """Tasks for a folder, a ``.parquet`` file, or a ``.tar`` pattern / folder of tars."""
    path = Path(input_path)
    if path.is_dir() and not any(path.glob("*.tar")):
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return [Task(i, "folder", input_path, c) for i, c in enumerate(_chunks(files,
                                                                              samples_per_shard))]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
        return [Task(i, "parquet", input_path, ((start, min(rows, start + samples_per_shard)),))
                for i, start in enumerate(range(0, rows, samples_per_shard))]
    tars = sorted(glob.glob(str(path / "*.tar"))) if path.is_dir() else \
        sorted(u for p in wds.shardlists.expand_urls(input_path) for u in glob.glob(p))
    if not tars:
        raise ValueError(f"no images, parquet or tar shards at {input_path!r}")
    return [Task(i, "tar", input_path, (tar,)) for i, tar in enumerate(tars)]


def input_name(task: Task, item) -> str:
    """The name of one of ``task.items`` as the user knows it: a file's path relative to
    the input folder (as given when the input is a file or pattern), ``rows A-B`` of a
    parquet. It stays the same when the input folder moves."""
    if task.kind == "parquet":
        return f"rows {item[0]}-{item[1]}"
    return os.path.relpath(item, task.source) if os.path.isdir(task.source) else str(item)


def plan_videos(input_dir: str, clips_per_shard: int) -> list[Task]:
    """Tasks over the clips of a folder, sorted by name."""
    files = sorted(str(p) for p in Path(input_dir).rglob("*") if p.suffix.lower() in
                   VIDEO_SUFFIXES)
    if not files:
        raise ValueError(f"no video clips in {input_dir!r}")
    return [Task(i, "video", input_dir, c) for i, c in enumerate(_chunks(files, clips_per_shard))]


def decode_image(data: bytes, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB, shrunk so the longer side is at most ``max_side``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise Rejected("too_large", f"{image.width}x{image.height}")
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
            image = _eight_bit(image).convert("RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return np.array(image)
    except Rejected:
        raise
    except Exception as err:  # PIL raises many types for corrupt files
        raise Rejected("bad_image", str(err)) from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (PNG opens as ``I;16*`` or ``I``) scaled to 8 bits, rounded;
    Pillow's ``convert("RGB")`` clips those values at 255, so all but the darkest tones
    turned white. Other modes pass unchanged (16-bit RGB PNGs already open as 8-bit RGB)."""
    if not image.mode.startswith("I"):
        return image
    return image.convert("I").point(lambda value: value / 257 + 0.5).convert("L")


def sample_key(key: str) -> str:
    """``key`` as the shards' sample key, or ``Rejected("unsafe_key")``.

    Keys come from input data (tar members, parquet rows) and name files: previews and the
    output tar's members. A key that is not one plain path component (empty, ``.``/``..``
    only, a ``/`` or ``\\``, a control character, too long) could name a file outside
    ``--output`` and is refused. Dots become ``_``: webdataset cuts a key at its first dot,
    so ``IMG.2020`` would be read back as key ``IMG`` without its members.
    """
    if (not key.strip(".") or "/" in key or "\\" in key or len(key.encode()) > MAX_KEY_BYTES
            or any(ord(c) < 32 for c in key)):
        raise Rejected("unsafe_key", repr(key[:MAX_KEY_BYTES]))
    return key.replace(".", "_")


def read_images(task: Task) -> Iterator[tuple[str, bytes, str, str]]:
    """(key, encoded image, caption, name) of every input of ``task``; ``name`` tells the
    user which input it is (``stats.json`` lists rejected inputs by it)."""
    readers = {"folder": _folder_images, "parquet": _parquet_images, "tar": _tar_images}
    yield from readers[task.kind](task)


def _folder_images(task: Task) -> Iterator[tuple[str, bytes, str, str]]:
    """Image files; the caption is ``<stem>.txt`` beside one ('' without)."""
    for path in task.items:
        text = Path(path).with_suffix(".txt")
        caption = text.read_text(encoding="utf-8").strip() if text.exists() else ""
        yield Path(path).stem, Path(path).read_bytes(), caption, input_name(task, path)


def _parquet_images(task: Task) -> Iterator[tuple[str, bytes, str, str]]:
    """img2dataset parquet rows: ``jpg`` bytes, ``caption`` or ``txt``, ``key`` (else the
    row number)."""
    import pyarrow.parquet as pq

    table = pq.read_table(task.source)
    for start, stop in task.items:
        for row, record in enumerate(table.slice(start, stop - start).to_pylist(), start):
            caption = record.get("caption") or record.get("txt") or ""
            key = str(record.get("key") or f"{row:09d}")
            yield key, record.get("jpg") or b"", caption, key


def _tar_images(task: Task) -> Iterator[tuple[str, bytes, str, str]]:
    """img2dataset webdataset shards: ``jpg``/``png``/``webp`` + ``txt`` per key."""
    for tar in task.items:
        for raw in wds.DataPipeline(wds.SimpleShardList([tar]),
                                    wds.tarfile_to_samples(handler=wds.warn_and_continue)):
            data = raw.get("jpg") or raw.get("png") or raw.get("webp") or b""
            caption = raw.get("txt", b"").decode("utf-8", "replace").strip()
            yield raw["__key__"], data, caption, f"{input_name(task, tar)}:{raw['__key__']}"


def read_frames(path: str, positions: list[float]) -> list[np.ndarray]:
    """RGB frames at ``positions`` of a clip (0: first, 0.5: middle, 1: last), by OpenCV."""
    capture = cv2.VideoCapture(path)
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:
            raise Rejected("bad_video", f"{path}: no frames")
        frames = []
        for position in positions:
            index = min(total - 1, int(position * (total - 1) + 0.5))
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if not ok:
                raise Rejected("bad_video", f"{path}: frame {index} of {total}")
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return frames
    finally:
        capture.release()


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
    if mapping and isinstance(appearance, list) and "male" in mapping:
        return "man" if appearance[mapping.index("male")] else "woman"
    return None


def load_video_meta(path: str, texts: str | None = None) -> dict[str, dict]:
    """Clip id (file stem) -> {"subject": "man"|"woman"|"person", "text": description or ""}.

    ``path``: the clips' info json. CelebV-Text's release holds per clip only download data
    (``{"clips": {id: {"ytb_id", "duration", "bbox", "version"}}}``, ids with or without
    ".mp4"; a bare ``{id: {...}}`` also works); CelebV-HQ-style files add attributes
    (``"meta_info": {"appearance_mapping": [...]}`` and per clip ``"attributes":
    {"appearance": [0/1 ...]}`` or ``"gender"``) and may carry a ``"text"``.
    ``texts``: CelebV-Text's description folder, one ``<clip id>.txt`` per clip (its first
    non-empty line is the description), searched recursively.

    The subject is the attributes' gender, else the first gendered word of the description
    ("man", "she", ...), else "person".
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    mapping = data.get("meta_info", {}).get("appearance_mapping")
    mapping = [str(m).lower() for m in mapping] if mapping else None
    clips = data.get("clips", data)
    files = {p.stem: p for p in Path(texts).rglob("*.txt")} if texts else {}
    meta = {}
    for key, entry in clips.items():
        if not isinstance(entry, dict):
            continue
        clip = Path(str(key)).stem if Path(str(key)).suffix.lower() in VIDEO_SUFFIXES else str(key)
        text = str(entry.get("text") or entry.get("caption") or "") or _first_line(files.get(clip))
        meta[clip] = {"subject": _gender(entry, mapping) or _gender_in_text(text) or "person",
                      "text": text}
    return meta


def _first_line(path: Path | None) -> str:
    """The first non-empty line of a text file ('' without one)."""
    if path is None:
        return ""
    lines = (line.strip() for line in path.read_text(encoding="utf-8", errors="replace")
             .splitlines())
    return next((line for line in lines if line), "")


GENDER_WORDS = {"man": "man", "male": "man", "he": "man", "his": "man", "him": "man",
                "boy": "man", "gentleman": "man", "woman": "woman", "female": "woman",
                "she": "woman", "her": "woman", "girl": "woman", "lady": "woman"}


def _gender_in_text(text: str) -> str | None:
    """"man" / "woman" from the first gendered word of a description, or None."""
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in GENDER_WORDS:
            return GENDER_WORDS[word]
    return None


def video_caption(meta: dict) -> str:
    """Caption naming the subject as man/woman (PortraitBooth); the clip's description
    follows when there is one (first letter lowered: it continues the sentence)."""
    text = meta["text"].strip()
    return f"a photo of a {meta['subject']}" + (f", {text[:1].lower()}{text[1:]}" if text else "")