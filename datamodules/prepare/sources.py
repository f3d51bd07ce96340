"""Raw image inputs of ``datamodules.prepare``, cut into tasks (one task = one output shard).

- a folder of images (``*.jpg|jpeg|png|webp``, caption in ``<stem>.txt`` beside it);
- a LAION-style parquet written by img2dataset with ``output_format=parquet`` (image bytes
  in ``jpg``, caption in ``caption`` or ``txt``, ``key``), read with pyarrow. A parquet of
  URLs without image bytes (LAION-Face's ``laion_face_part_000NN.parquet``, img2dataset's
  per-shard ``NNNNN.parquet``) is refused with the command that downloads the images;
- img2dataset's webdataset output (``.tar`` shards with ``jpg``/``png`` + ``txt`` + ``json``),
  also one folder per part (LAION-Face's ``split_000NN/``, found recursively): one task per
  input shard. img2dataset numbers keys from ``000000000`` in every part, so a key read from
  a tar below the input folder is prefixed with its part (``split_00001_000000000``). The
  ``json`` member's columns (``SAMPLE_ID``, ``LICENSE``, ``NSFW``, ``similarity``, ``url``...)
  travel with the sample as its ``source`` metadata.

Video inputs: ``datamodules.prepare.clips``.
"""
from __future__ import annotations

import functools
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

from datamodules import storage
from datamodules.schema import MAX_PIXELS
from datamodules.prepare.rejected import Rejected
from ldm_ext.cli import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
IMAGE_COLUMNS = ("jpg", "png", "webp")  # img2dataset's image bytes, by encode format
IMG2DATASET_COLUMNS = '["NSFW","similarity","LICENSE","SAMPLE_ID"]'  # LAION-Face's download.sh
MAX_KEY_BYTES = 200  # a key names files (previews, tar members): well under NAME_MAX (255)


@dataclass(frozen=True)
class Task:
    """One output shard: ``kind`` folder | parquet | tar | video, its ``source`` (the input)
    and ``items``, the inputs it reads: file paths for folder/video (``(raw video, clip
    id)`` for a clip cut from a raw video), input tar paths for tar, ``(start, stop)`` row
    ranges for parquet (``input_name`` names each)."""

    index: int
    kind: str
    source: str
    items: tuple = ()


def chunks(items: list, size: int) -> list[tuple]:
    """``items`` cut into tuples of ``size`` (the last may be shorter)."""
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def plan_images(input_path: str, samples_per_shard: int) -> list[Task]:
    """Tasks for a folder of images, a ``.parquet`` file with image bytes, or ``.tar``
    shards: a pattern, or a folder holding them at any depth (one folder per part). Any of
    them may be a URL (``s3://``...: ``datamodules.storage``)."""
    if input_path.endswith(".parquet"):
        return _plan_parquet(input_path, samples_per_shard)
    if _is_folder(input_path):
        files = storage.find(input_path)
        tars = [f for f in files if f.endswith(".tar")]
        if not tars:
            return _plan_folder(input_path, files, samples_per_shard)
    else:
        tars = sorted(u for u in storage.expand(input_path) if storage.exists(u))
    if not tars:
        raise InputError(f"no images, parquet or tar shards at {input_path!r}")
    return [Task(i, "tar", input_path, (tar,)) for i, tar in enumerate(tars)]


def _plan_folder(path: str, found: list[str], samples_per_shard: int) -> list[Task]:
    """Tasks over the images among ``found``, the files under the folder ``path``."""
    files = [f for f in found if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        parquets = [f for f in found if f.endswith(".parquet")]
        if parquets:
            check_parquet(parquets[0])  # LAION metadata: says which command downloads it
            raise InputError(f"{path} holds no images or tar shards but {len(parquets)} "
                             f"parquet files: pass one with --input {parquets[0]}")
        raise InputError(f"no images, parquet or tar shards in {str(path)!r}")
    return [Task(i, "folder", str(path), c) for i, c in enumerate(chunks(files,
                                                                         samples_per_shard))]


def _parquet(path: str):
    """A pyarrow ``ParquetFile`` of a path or URL."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(storage.open_read(path) if storage.is_remote(path) else path)


def _plan_parquet(path: str, samples_per_shard: int) -> list[Task]:
    check_parquet(path)
    rows = _parquet(path).metadata.num_rows
    return [Task(i, "parquet", str(path), ((start, min(rows, start + samples_per_shard)),))
            for i, start in enumerate(range(0, rows, samples_per_shard))]


def check_parquet(path: str | Path) -> None:
    """Raise ``InputError`` unless the parquet at ``path`` holds image bytes: a table of
    URLs (LAION metadata, img2dataset's per-shard sidecar) says what to run instead."""
    columns = _parquet(str(path)).schema_arrow.names
    if any(c in columns for c in IMAGE_COLUMNS):
        return
    url = next((c for c in columns if c.lower() == "url"), None)
    if url and "status" in columns:  # img2dataset writes one beside each of its tars
        raise InputError(f"{path} is img2dataset's metadata of the tar beside it, not images: "
                         f"pass the folder of .tar shards (--input {os.path.dirname(path)})")
    if url:
        caption = next((c for c in columns if c.lower() in ("text", "caption")), "TEXT")
        raise InputError(
            f"{path} holds image URLs, not images (columns {', '.join(columns)}): download "
            f"them first with `img2dataset --url_list {path} --input_format parquet --url_col "
            f"{url} --caption_col {caption} --output_format webdataset --output_folder DIR "
            f"--save_additional_columns '{IMG2DATASET_COLUMNS}'`, then run `python -m "
            f"datamodules.prepare images --input DIR ...`")
    raise InputError(f"{path} has no image column ({'/'.join(IMAGE_COLUMNS)}); its columns: "
                     f"{', '.join(columns)}")


def input_name(task: Task, item) -> str:
    """The name of one of ``task.items`` as the user knows it: a file's path relative to
    the input folder (as given when the input is a file or pattern), ``rows A-B`` of a
    parquet, ``<raw video>:<clip id>`` of a clip cut from a raw video. It stays the same
    when the input folder moves."""
    if task.kind == "parquet":
        return f"rows {item[0]}-{item[1]}"
    if isinstance(item, tuple):  # (raw video, clip id): the clip cut from it
        return f"{input_name(task, item[0])}:{item[1]}"
    if storage.is_remote(task.source):
        root = task.source.rstrip("/") + "/"
        return item.removeprefix(root) if _is_folder(task.source) else str(item)
    return os.path.relpath(item, task.source) if os.path.isdir(task.source) else str(item)


@functools.lru_cache(maxsize=64)
def _remote_folder(url: str) -> bool:
    return storage.is_dir(url)  # asked once per input URL, not once per input file


def _is_folder(source: str) -> bool:
    """Whether the input ``source`` (a path or URL) is a folder (else a file or pattern)."""
    return _remote_folder(source) if storage.is_remote(source) else os.path.isdir(source)


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


class ImageInput(NamedTuple):
    """One input image as read: ``source`` is its own metadata (img2dataset's columns)."""

    key: str
    data: bytes
    caption: str
    name: str  # how the user finds it (stats.json lists rejected inputs by it)
    source: dict


def read_images(task: Task) -> Iterator[ImageInput]:
    """Every input of ``task``."""
    readers = {"folder": _folder_images, "parquet": _parquet_images, "tar": _tar_images}
    yield from readers[task.kind](task)


def _folder_images(task: Task) -> Iterator[ImageInput]:
    """Image files; the caption is ``<stem>.txt`` beside one ('' without)."""
    for path in task.items:
        text = os.path.splitext(path)[0] + ".txt"
        caption = storage.read_text(text).strip() if storage.exists(text) else ""
        yield ImageInput(Path(path).stem, storage.read_bytes(path), caption,
                         input_name(task, path), {})


def _parquet_images(task: Task) -> Iterator[ImageInput]:
    """img2dataset parquet rows: ``jpg`` bytes, ``caption`` or ``txt``, ``key`` (else the
    row number); the other scalar columns are the source metadata."""
    table = _parquet(task.source).read()
    for start, stop in task.items:
        for row, record in enumerate(table.slice(start, stop - start).to_pylist(), start):
            caption = record.get("caption") or record.get("txt") or ""
            key = str(record.get("key") or f"{row:09d}")
            data = next((record[c] for c in IMAGE_COLUMNS if record.get(c)), b"")
            yield ImageInput(key, data, caption, key, _source_meta(record))


def _tar_images(task: Task) -> Iterator[ImageInput]:
    """img2dataset webdataset shards: ``jpg``/``png``/``webp`` + ``txt`` (+ ``json``) per
    key; keys of a tar below the input folder get its part's prefix (``part_prefix``)."""
    for tar in task.items:
        prefix = part_prefix(task.source, tar)
        import webdataset as wds  # imports torch: only where tar shards are read

        for raw in wds.DataPipeline(wds.SimpleShardList([tar]),
                                    storage.tar_samples(handler=wds.warn_and_continue)):
            data = next((raw[c] for c in IMAGE_COLUMNS if raw.get(c)), b"")
            caption = raw.get("txt", b"").decode("utf-8", "replace").strip()
            yield ImageInput(prefix + raw["__key__"], data, caption,
                             f"{input_name(task, tar)}:{raw['__key__']}", _json_meta(raw))


def part_prefix(source: str, tar: str) -> str:
    """``<folder>_`` for a tar in a subfolder of the input root (``split_00001/00000.tar``
    -> ``split_00001_``), '' at the root. The root is the input folder, or the folder a
    pattern starts in (``data/split_*/*.tar`` -> ``data``)."""
    root = source if _is_folder(source) else os.path.dirname(_fixed_part(source))
    folder = os.path.relpath(os.path.dirname(tar), root or ".")
    return "" if folder == "." else folder.replace(os.sep, "_") + "_"


def _fixed_part(pattern: str) -> str:
    """``pattern`` up to its first glob or brace character."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?[{"), default=len(pattern))
    return pattern[:cut]


def _json_meta(raw: dict) -> dict:
    """img2dataset's per-sample ``json`` member as source metadata ({} without one)."""
    try:
        record = json.loads(raw["json"]) if "json" in raw else {}
    except ValueError:
        return {}
    return _source_meta(record) if isinstance(record, dict) else {}


def _source_meta(record: dict) -> dict:
    """The scalar columns of an img2dataset record, less the image, caption and EXIF."""
    skip = {*IMAGE_COLUMNS, "caption", "txt", "exif"}
    return {k: v for k, v in record.items()
            if k not in skip and (v is None or isinstance(v, (str, int, float, bool)))}


@dataclass(frozen=True)
class SourceFilter:
    """Inputs kept by their own metadata (LAION's ``NSFW`` tag and CLIP ``similarity``); an
    input without the column a filter reads is rejected too (``no_nsfw_tag``,
    ``no_similarity``), so a filter never passes what it could not check."""

    drop_nsfw: tuple[str, ...] = ()  # NSFW tags to drop (LAION: NSFW, UNSURE, UNLIKELY)
    min_similarity: float | None = None

    def check(self, source: dict) -> None:
        """Raise ``Rejected`` when ``source`` fails a filter."""
        if self.drop_nsfw:
            tag = source.get("NSFW")
            if tag is None:
                raise Rejected("no_nsfw_tag")
            if str(tag).upper() in {t.upper() for t in self.drop_nsfw}:
                raise Rejected("nsfw", str(tag))
        if self.min_similarity is not None:
            value = source.get("similarity")
            if value is None:
                raise Rejected("no_similarity")
            if float(value) < self.min_similarity:
                raise Rejected("low_similarity", str(value))
