"""Raw images or videos -> annotated webdataset shards of our schema (datamodules/schema.py):
``prepare`` and the work of one shard (the command line: ``datamodules.prepare.cli``).

Every output shard is one task (``datamodules.prepare.sources``), run by an engine
(``datamodules.prepare.engines``: a process pool over this machine's cores, or a Ray
cluster). A task writes ``shard-NNNNNN.tar`` atomically (``datamodules.storage``: a local
temporary name renamed, or an object-store upload committed at the end), then
``shard-NNNNNN.json`` (its stats and the inputs it holds), the done-marker: a rerun redoes
no finished shard, resumes an interrupted one and puts inputs added since into new shards
(``datamodules.prepare.resume``; inputs gone since stop it). At the end ``stats.json`` sums
the shards (kept, rejected by reason and by input name, faces-per-image histogram, notes
such as captions cut to ``schema.MAX_CAPTION_CHARS``) and
shard 0 writes a few previews (boxes, masks, pose). A task annotates its inputs
``batch_size`` at a time (the face detector takes the batch; the other stages go input
by input), with the same samples and stats as one at a time. Inputs and output may be local paths
or URLs (``s3://``...). Inputs (``datamodules.prepare.sources``): image folders, parquet,
img2dataset's tars (one folder per part); each sample keeps its input's own metadata
(img2dataset's columns) in ``meta.json`` ``source``.

Videos (CelebV-Text, PortraitBooth; ``datamodules.prepare.clips``,
``datamodules.prepare.clip_meta``): the target is the first or the last frame (chosen by the
clip's key), the reference face the largest face of the middle frame, the caption names the
subject as man/woman and goes on with the clip's texts. A clip the info json lacks is
rejected (``no_metadata``); clips whose texts disagree on the subject, or lack a
description, are counted in ``notes``.
"""
from __future__ import annotations

import json
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np
import webdataset as wds

from datamodules import storage
from datamodules.codec import encode_sample
from datamodules.prepare.annotate import SampleAnnotator, crops_uint8
from datamodules.prepare.clip_meta import clip_id, video_caption
from datamodules.prepare.clips import read_frames
from datamodules.prepare.engines import run_local
from datamodules.prepare.preview import write_preview
from datamodules.prepare.rejected import Rejected
from datamodules.prepare.resume import pending, remove_leftovers, shard_path, task_sources
from datamodules.prepare.sources import (SourceFilter, Task, decode_image, input_name,
                                         read_images, sample_key)
from datamodules.schema import CAPTION_TRUNCATED, BadSample, Sample, cap_caption, validate
from ldm_ext.cli import InputError
from ldm_ext.face import Faces

log = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    """What ``prepare`` runs (see ``main`` for the command-line names)."""

    output: str
    annotator: SampleAnnotator = field(default_factory=SampleAnnotator)
    max_side: int = 1024  # longer image side kept in the shards
    previews: int = 4  # preview images written by shard 0
    meta: dict = field(default_factory=dict)  # videos: clip id -> ClipMeta
    source_filter: SourceFilter = field(default_factory=SourceFilter)
    batch_size: int = 1  # inputs whose faces are detected together (equal sizes batched)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size}: must be at least 1")


class Prepared(NamedTuple):
    """One input on its way to the annotator: ``image`` is ``Rejected`` when reading it
    failed; ``middle`` a clip's middle frame (its largest face is the reference);
    ``source`` the input's own metadata; ``notes`` counted in stats.json."""

    key: str
    image: np.ndarray | Rejected
    caption: str | None
    middle: np.ndarray | None
    name: str
    source: dict | None = None
    notes: tuple[str, ...] = ()


def _image_samples(task: Task, config: PrepareConfig) -> Iterator[Prepared]:
    """The inputs of an image task, decoded; filtered out or unreadable ones as
    ``Rejected``."""
    for key, data, caption, name, source in read_images(task):
        if task.kind == "folder" and not caption:
            caption = None  # no .txt beside the image: the annotator names the people
        caption, notes = _capped(caption)
        try:
            config.source_filter.check(source)
            image = decode_image(data, config.max_side)
        except Rejected as rejected:
            image = rejected
        yield Prepared(key, image, caption, None, name, source, notes)


def _capped(caption: str | None) -> tuple[str | None, tuple[str, ...]]:
    """The caption within ``MAX_CAPTION_CHARS`` (schema), and the note counting a cut."""
    if caption is None:
        return None, ()
    caption, cut = cap_caption(caption)
    return caption, (CAPTION_TRUNCATED,) if cut else ()


def _video_samples(task: Task, config: PrepareConfig) -> Iterator[Prepared]:
    """The clips of a video task: target frame, caption and middle frame. An item is a
    clip's path or ``(raw video, clip id)``."""
    for item in task.items:
        path, key = (item[0], item[1]) if isinstance(item, tuple) else (item, clip_id(item))
        name, meta = input_name(task, item), config.meta.get(key)
        try:
            if meta is None:
                raise Rejected("no_metadata", f"{key} is not in the info json")
            last = zlib.crc32(key.encode()) % 2  # first or last frame, fixed per clip
            target, middle = read_frames(path, [float(last), 0.5],
                                         meta if isinstance(item, tuple) else None)
            caption, cut = _capped(video_caption(meta))
            yield Prepared(key, _shrink(target, config.max_side), caption, middle, name,
                           notes=(*meta.notes, *cut))
        except Rejected as rejected:
            yield Prepared(key, rejected, "", None, name)


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    scale = max_side / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def run_task(task: Task, config: PrepareConfig) -> dict:
    """Annotate and write one shard; returns its stats, also written as the done-marker with
    the inputs the shard holds (``sources``) and those it rejected, by name and reason."""
    stats = {"inputs": 0, "kept": 0, "rejected": Counter(), "faces": Counter(),
             "models": Counter(), "notes": Counter(), "rejected_inputs": [],
             "sources": task_sources(task)}
    samples = _video_samples(task, config) if task.kind == "video" else \
        _image_samples(task, config)
    previews = []
    with storage.atomic_write(shard_path(config.output, task.index, "tar")) as stream, \
            wds.TarWriter(stream, encoder=False, mtime=0) as writer:
        for item, sample in _annotated(config, samples):
            stats["inputs"] += 1
            try:
                if isinstance(sample, Exception):
                    raise sample
                writer.write(encode_sample(sample))
            except (Rejected, BadSample) as rejected:
                _reject(stats, item.name, rejected.reason)
                continue
            except Exception as err:  # one odd input must not cost the shard  # noqa: BLE001
                log.warning("shard %d: %s failed: %r", task.index, item.name, err)
                _reject(stats, item.name, "error")
                continue
            stats["kept"] += 1
            stats["notes"].update(item.notes)
            stats["faces"][str(sample.num_faces)] += 1
            stats["models"][f"{sample.face_model}/{sample.pose_model}"] += 1
            if task.index == 0 and len(previews) < config.previews:
                previews.append(write_preview(sample, storage.join(config.output, "previews")))
    stats = {k: dict(v) if isinstance(v, Counter) else v for k, v in stats.items()}
    storage.write_text(shard_path(config.output, task.index, "json"), json.dumps(stats))
    return stats


def _annotated(config: PrepareConfig, samples: Iterator[Prepared]
               ) -> Iterator[tuple[Prepared, Sample | Exception]]:
    """Each input with its validated sample or the exception that leaves it out, in input
    order, annotated ``config.batch_size`` inputs at a time."""
    samples = iter(samples)
    while batch := list(islice(samples, config.batch_size)):
        yield from zip(batch, _annotate_batch(config, batch))


def _annotate_batch(config: PrepareConfig, batch: list[Prepared]
                    ) -> Iterator[Sample | Exception]:
    """The validated sample of each input of ``batch``, or the exception that leaves it
    out. The faces of every frame the batch needs (the images, the clips' middle frames)
    are detected in one batch; should that fail, each input is annotated alone, so that an
    error is counted against its own input only. The per-image stages run as each input is
    taken (one input's masks in memory at a time; a shard's inputs written as they come)."""
    frames = [f for item in batch for f in (item.image, item.middle) if _is_frame(f)]
    try:
        found = iter(config.annotator.faces_batch(frames))
    except Exception:  # annotated one at a time instead  # noqa: BLE001
        found = None
    for item in batch:
        faces = [next(found) if found is not None and _is_frame(f) else None
                 for f in (item.image, item.middle)]
        try:
            yield _annotate(config, item, *faces)
        except Exception as err:  # counted by run_task  # noqa: BLE001
            yield err


def _is_frame(image) -> bool:
    return isinstance(image, np.ndarray)


def _annotate(config: PrepareConfig, item: Prepared, faces: Faces | None = None,
              middle_faces: Faces | None = None) -> Sample:
    """The validated sample of one input (``faces``, ``middle_faces``: of its image and
    middle frame, when already detected); raises ``Rejected`` / ``BadSample``."""
    key = sample_key(item.key)  # from input data: names previews and tar members
    if isinstance(item.image, Rejected):
        raise item.image
    reference = None
    if item.middle is not None:
        if middle_faces is None:
            middle_faces = config.annotator.faces(item.middle)
        if not len(middle_faces):
            raise Rejected("no_reference_face")
        reference = crops_uint8(middle_faces.select(0))[0]
    sample = config.annotator(key, item.image, item.caption, faces)
    sample.reference, sample.source = reference, dict(item.source or {})
    if reference is not None:
        sample.models["reference"] = f"{sample.face_model}(middle frame)"
    return validate(sample)


def _reject(stats: dict, name: str, reason: str) -> None:
    stats["rejected"][reason] += 1
    stats["rejected_inputs"].append({"input": name, "reason": reason})


def summarise(output: str) -> dict:
    """Sum the per-shard stats into ``stats.json``."""
    total = {"shards": 0, "inputs": 0, "kept": 0, "rejected": Counter(), "faces": Counter(),
             "models": Counter(), "notes": Counter(), "rejected_inputs": []}
    for text in storage.read_all(storage.glob(storage.join(output, "shard-*.json"))).values():
        shard = json.loads(text)
        total["shards"] += 1
        for key in ("inputs", "kept"):
            total[key] += shard[key]
        for key in ("rejected", "faces", "models", "notes"):
            total[key].update(shard.get(key, {}))
        total["rejected_inputs"] += shard.get("rejected_inputs", [])
    total = {k: dict(sorted(v.items())) if isinstance(v, Counter) else v
             for k, v in total.items()}
    total["rejected_inputs"].sort(key=lambda entry: entry["input"])
    storage.write_text(storage.join(output, "stats.json"), json.dumps(total, indent=1))
    return total


def prepare(tasks: list[Task], config: PrepareConfig, workers: int | None = None,
            engine: Callable = run_local) -> dict:
    """Run what no finished shard holds yet (``resume.pending``: an interrupted run's shards,
    inputs added since) on ``engine`` (``datamodules.prepare.engines``) with ``workers``
    processes (default: all cores of this machine or the Ray cluster); print images/s;
    return the summed stats."""
    remove_leftovers(config.output)
    todo, finished = pending(tasks, config.output)
    start = time.perf_counter()
    done = list(engine(run_task, config, todo, workers)) if todo else []
    remove_leftovers(config.output)  # of a worker lost mid-shard (its shard was redone)
    seconds = time.perf_counter() - start
    inputs = sum(s["inputs"] for s in done)
    print(f"prepared {inputs} inputs in {len(todo)} shards ({finished} already "
          f"done) in {seconds:.1f} s: {inputs / max(seconds, 1e-9):.2f} images/s")
    return summarise(config.output)
