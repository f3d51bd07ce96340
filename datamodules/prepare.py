"""Raw images or videos -> annotated webdataset shards of our schema (datamodules/schema.py).

::

    python -m datamodules.prepare images --input DIR|FILE.parquet|SHARDS --output OUT \
        [--drop-nsfw NSFW UNSURE] [--min-similarity 0.3]
    python -m datamodules.prepare videos --input CLIPS|RAW_VIDEOS --meta celebvtext_info.json \
        [--texts TEXTS_DIR] [--text-extras emotion action_dur] --output OUT

Every output shard is one task (``datamodules.sources``), run in a process pool over all
cores. A task writes ``shard-NNNNNN.tar`` under a temporary name, renames it, then writes
``shard-NNNNNN.json`` (its stats and the inputs it holds), the done-marker: a rerun
redoes no finished shard, resumes an interrupted one and puts inputs added since into new
shards (``datamodules.resume``; inputs gone since stop it). At the end ``stats.json`` sums
the shards (kept, rejected by reason and by input name, faces-per-image histogram) and
shard 0 writes a few previews (boxes, masks, pose). Inputs (``datamodules.sources``):
image folders, parquet, img2dataset's tars (one folder per part); each sample keeps its
input's own metadata (img2dataset's columns) in ``meta.json`` ``source``.

Videos (CelebV-Text, PortraitBooth; ``datamodules.clips``, ``datamodules.clip_meta``): the
target is the first or the last frame (chosen by the clip's key), the reference face the
largest face of the middle frame, the caption names the subject as man/woman and goes on
with the clip's texts. A clip the info json lacks is rejected (``no_metadata``); clips
whose texts disagree on the subject, or lack a description, are counted in ``notes``.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np
import torch
import webdataset as wds

from datamodules.annotate import Annotator, Filters, Rejected, crops_uint8
from datamodules.preview import write_preview
from datamodules.codec import encode_sample
from datamodules.parsing import DEFAULT_FACE_PARSER, DEFAULT_HUMAN_PARSER
from datamodules.schema import BadSample, validate
from datamodules.resume import pending, remove_leftovers, shard_path, task_sources
from datamodules.clip_meta import DEFAULT_EXTRAS, TEXT_FOLDERS, clip_id, load_video_meta, \
    video_caption
from datamodules.clips import plan_videos, read_frames
from datamodules.sources import (SourceFilter, Task, decode_image, input_name, plan_images,
                                 read_images, sample_key)

log = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    """What ``prepare`` runs (see ``main`` for the command-line names)."""

    output: str
    annotator: Annotator = field(default_factory=Annotator)
    max_side: int = 1024  # longer image side kept in the shards
    previews: int = 4  # preview images written by shard 0
    meta: dict = field(default_factory=dict)  # videos: clip id -> ClipMeta
    source_filter: SourceFilter = field(default_factory=SourceFilter)


class Prepared(NamedTuple):
    """One input on its way to the annotator: ``image`` is ``Rejected`` when reading it
    failed; ``source`` the input's own metadata; ``notes`` counted in stats.json."""

    key: str
    image: np.ndarray | Rejected
    caption: str | None
    reference: np.ndarray | None
    name: str
    source: dict | None = None
    notes: tuple[str, ...] = ()


def is_prepared(folder: str | Path) -> bool:
    """True when ``folder`` holds ``prepare``'s output: at least one finished shard (its
    json, the done-marker) and the run's ``stats.json``."""
    folder = Path(folder)
    return (folder / "stats.json").exists() and any(folder.glob("shard-*.json"))


def prepared_shards(root: str | Path, mode: str = "images") -> str:
    """The shard pattern of a folder written by ``prepare <mode>``; a clear error when it is
    not one (an unfinished run: run ``prepare`` again, it resumes)."""
    if not is_prepared(root):
        raise FileNotFoundError(
            f"{root} holds no finished `prepare` output (shard-*.json and stats.json): run "
            f"`python -m datamodules.prepare {mode} --input ... --output {root}` (it resumes "
            f"an interrupted run)")
    return str(Path(root) / "shard-*.tar")


def prepared_stats(root: str | Path) -> dict:
    """``stats.json`` of a prepared folder (kept, rejected by reason, faces per image)."""
    return json.loads((Path(root) / "stats.json").read_text())


def _image_samples(task: Task, config: PrepareConfig) -> Iterator[Prepared]:
    """The inputs of an image task, decoded; filtered out or unreadable ones as
    ``Rejected``."""
    for key, data, caption, name, source in read_images(task):
        if task.kind == "folder" and not caption:
            caption = None  # no .txt beside the image: the annotator names the people
        try:
            config.source_filter.check(source)
            image = decode_image(data, config.max_side)
        except Rejected as rejected:
            image = rejected
        yield Prepared(key, image, caption, None, name, source)


def _video_samples(task: Task, config: PrepareConfig) -> Iterator[Prepared]:
    """The clips of a video task: target frame, caption and reference crop. An item is a
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
            faces = config.annotator.faces(middle)
            if not len(faces):
                raise Rejected("no_reference_face")
            yield Prepared(key, _shrink(target, config.max_side), video_caption(meta),
                           crops_uint8(faces.select(0))[0], name, notes=meta.notes)
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
    tar, previews = shard_path(config.output, task.index, "tar"), []
    tar.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{tar}.{os.getpid()}.tmp"
    with wds.TarWriter(tmp, encoder=False, mtime=0) as writer:
        for item in samples:
            stats["inputs"] += 1
            try:
                sample = _annotate(config, item)
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
                previews.append(write_preview(sample, Path(config.output) / "previews"))
    os.replace(tmp, tar)
    stats = {k: dict(v) if isinstance(v, Counter) else v for k, v in stats.items()}
    shard_path(config.output, task.index, "json").write_text(json.dumps(stats))
    return stats


def _annotate(config: PrepareConfig, item: Prepared):
    """The validated sample of one input; raises ``Rejected`` / ``BadSample``."""
    key = sample_key(item.key)  # from input data: names previews and tar members
    if isinstance(item.image, Rejected):
        raise item.image
    sample = config.annotator(key, item.image, item.caption)
    sample.reference, sample.source = item.reference, dict(item.source or {})
    if item.reference is not None:
        sample.models["reference"] = f"{sample.face_model}(middle frame)"
    return validate(sample)


def _reject(stats: dict, name: str, reason: str) -> None:
    stats["rejected"][reason] += 1
    stats["rejected_inputs"].append({"input": name, "reason": reason})


_CONFIG: PrepareConfig | None = None


def _init_worker(config: PrepareConfig) -> None:
    """Pool worker: one intra-op thread per process (the pool uses the cores)."""
    global _CONFIG
    torch.set_num_threads(1)
    _CONFIG = config


def _run_in_worker(task: Task) -> dict:
    return run_task(task, _CONFIG)


def summarise(output: str) -> dict:
    """Sum the per-shard stats into ``stats.json``."""
    total = {"shards": 0, "inputs": 0, "kept": 0, "rejected": Counter(), "faces": Counter(),
             "models": Counter(), "notes": Counter(), "rejected_inputs": []}
    for path in sorted(Path(output).glob("shard-*.json")):
        shard = json.loads(path.read_text())
        total["shards"] += 1
        for key in ("inputs", "kept"):
            total[key] += shard[key]
        for key in ("rejected", "faces", "models", "notes"):
            total[key].update(shard.get(key, {}))
        total["rejected_inputs"] += shard.get("rejected_inputs", [])
    total = {k: dict(sorted(v.items())) if isinstance(v, Counter) else v
             for k, v in total.items()}
    total["rejected_inputs"].sort(key=lambda entry: entry["input"])
    Path(output, "stats.json").write_text(json.dumps(total, indent=1))
    return total


def prepare(tasks: list[Task], config: PrepareConfig, workers: int | None = None) -> dict:
    """Run what no finished shard holds yet (``resume.pending``: an interrupted run's shards,
    inputs added since) on ``workers`` processes (default: all cores; <= 1: in this
    process); print images/s; return the summed stats."""
    remove_leftovers(config.output)
    todo, finished = pending(tasks, config.output)
    workers = min(workers or os.cpu_count() or 1, len(todo))
    start, done = time.perf_counter(), []
    if workers <= 1:
        done = [run_task(t, config) for t in todo]
    else:
        # fork: workers start at once with the imports done (as DataLoader workers do);
        # each runs its own copy of the annotator (models are built on first use)
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(workers, _init_worker, (config,)) as pool:
            done = list(pool.imap_unordered(_run_in_worker, todo))
    seconds = time.perf_counter() - start
    inputs = sum(s["inputs"] for s in done)
    print(f"prepared {inputs} inputs in {len(todo)} shards ({finished} already "
          f"done) in {seconds:.1f} s: {inputs / max(seconds, 1e-9):.2f} images/s")
    return summarise(config.output)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("images", "videos"))
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--meta", help="videos: the clips' info json (celebvtext_info.json)")
    parser.add_argument("--texts", help="videos: CelebV-Text's text release (the folder of "
                        "face40_details_new/, emotion/, ...) or one folder of <clip>.txt")
    parser.add_argument("--text-extras", nargs="*", default=list(DEFAULT_EXTRAS),
                        choices=TEXT_FOLDERS[1:], help="videos: text folders appended to the "
                        "description when a clip has them")
    parser.add_argument("--drop-nsfw", nargs="*", default=[], metavar="TAG",
                        help="images: drop inputs whose NSFW column is one of these "
                        "(LAION: NSFW UNSURE)")
    parser.add_argument("--min-similarity", type=float, default=None,
                        help="images: drop inputs whose CLIP similarity column is lower")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--detector", default="mtcnn")
    parser.add_argument("--pose", default="auto", choices=("auto", "openpose", "faces"))
    parser.add_argument("--segmenter", default="auto", choices=("auto", "face-parsing", "ellipse"))
    parser.add_argument("--parser", default=DEFAULT_FACE_PARSER,
                        help="face parser: hub id or local folder (SegFormer)")
    parser.add_argument("--characters", default="auto",
                        choices=("auto", "human-parsing", "pose-hull"))
    parser.add_argument("--human-parser", default=DEFAULT_HUMAN_PARSER,
                        help="character masks: hub id or local folder (SegFormer)")
    parser.add_argument("--min-faces", type=int, default=1)
    parser.add_argument("--max-faces", type=int, default=8)
    parser.add_argument("--min-face-size", type=float, default=32.0)
    parser.add_argument("--min-score", type=float, default=0.95)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--previews", type=int, default=4)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the stats."""
    args = _parser().parse_args(argv)
    filters = Filters(args.min_faces, args.max_faces, args.min_face_size, args.min_score)
    annotator = Annotator(args.detector, args.pose, args.segmenter, args.parser,
                          characters=args.characters, human_parser=args.human_parser,
                          filters=filters)
    config = PrepareConfig(args.output, annotator, max_side=args.max_side,
                           previews=args.previews, source_filter=SourceFilter(
                               tuple(args.drop_nsfw), args.min_similarity))
    if args.mode == "videos":
        if not args.meta:
            raise SystemExit("videos needs --meta (the clips' info json)")
        config.meta = load_video_meta(args.meta, args.texts, tuple(args.text_extras))
        tasks = plan_videos(args.input, args.samples_per_shard, config.meta)
    else:
        tasks = plan_images(args.input, args.samples_per_shard)
    return prepare(tasks, config, args.workers)


if __name__ == "__main__":
    from ldm_ext.cli import run_cli

    raise SystemExit(run_cli(main, prog="prepare"))
