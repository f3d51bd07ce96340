"""``python -m datamodules.prepare``: raw images or videos -> annotated training shards.

::

    python -m datamodules.prepare images --input DIR|FILE.parquet|SHARDS --output OUT \
        [--drop-nsfw NSFW UNSURE] [--min-similarity 0.3] [--engine ray]
    python -m datamodules.prepare videos --input CLIPS|RAW_VIDEOS --meta celebvtext_info.json \
        [--texts TEXTS_DIR] [--text-extras emotion action_dur] --output OUT

``--input`` / ``--output`` of images may be URLs (``s3://bucket/laion/{00000..00099}.tar``,
``gs://...``: any fsspec protocol, credentials from the environment). ``--engine ray`` runs
the shards on the Ray cluster at ``RAY_ADDRESS`` (else a local Ray). What it does:
``datamodules.prepare.run``.

The flags, the local paths, the info json and a URL's store (credentials, bucket) are
checked before torch and the models load (``check_arguments``): a mistake is one line,
exit 2, in about a second, and nothing is written. The inputs themselves (which images,
parquet or tars a folder holds) are read after that.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from datamodules import storage
from datamodules.prepare.clip_meta import DEFAULT_EXTRAS, TEXT_FOLDERS, load_video_meta
from ldm_ext.perception.parsing import DEFAULT_FACE_PARSER, DEFAULT_HUMAN_PARSER
from ldm_ext.cli import ArgumentParser, InputError, positive_int
from ldm_ext.perception.pose import ANNOTATOR_FILES, DEFAULT_POSE_WEIGHTS, download_command


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m datamodules.prepare",
                            description=__doc__.splitlines()[0])
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
    parser.add_argument("--samples-per-shard", type=positive_int, default=1000)
    parser.add_argument("--workers", type=int, default=None,
                        help="default: all cores (of the Ray cluster with --engine ray)")
    parser.add_argument("--engine", default="local", choices=("local", "ray"),
                        help="local: a process pool; ray: the cluster at RAY_ADDRESS, else "
                        "a local Ray (pip install -e '.[scale]')")
    parser.add_argument("--gpus-per-worker", type=float, default=0,
                        help="ray: GPUs of each worker (its models run there)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="inputs of a shard whose faces are detected together (MTCNN "
                        "batches images of one size: a clip's frames); default 16 with "
                        "--gpus-per-worker, else 1 (batches ran 0.98-1.0x on a CPU)")
    parser.add_argument("--detector", default="mtcnn")
    parser.add_argument("--pose", default="auto", choices=("auto", "openpose", "faces"))
    parser.add_argument("--pose-weights", default=DEFAULT_POSE_WEIGHTS, metavar="DIR",
                        help="OpenPose's weights: folder in the lllyasviel/Annotators layout "
                        f"({', '.join(ANNOTATOR_FILES)}; `{download_command()}`) or hub id")
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
    parser.add_argument("--max-side", type=positive_int, default=1024)
    parser.add_argument("--previews", type=int, default=4)
    return parser


def default_batch_size(args: argparse.Namespace) -> int:
    """``--batch-size``, else 16 inputs per detector call on GPU workers (a batch is one
    launch per pyramid scale) and 1 on CPUs, where detection is bound by its arithmetic
    and batches did not pay (benchmarks/prepare_batch.py: 0.98-1.0x)."""
    if args.batch_size is not None:
        return args.batch_size
    return 16 if args.gpus_per_worker else 1


def check_arguments(args: argparse.Namespace) -> None:
    """What can be told from the flags and the paths alone: ``--input`` (one file or
    folder, not a pattern) and ``--texts`` exist, ``--output`` is no file, a URL's store
    can be reached (no credentials, no bucket: one line naming the flag). Nothing heavy
    is imported, nothing written."""
    if args.texts and not Path(args.texts).exists():
        raise InputError(f"--texts {args.texts}: no such folder")
    if not _pattern(args.input):
        with storage.named_errors("--input", args.input):
            if not storage.exists(args.input):
                raise InputError(f"--input {args.input}: no such file or folder")
    output = args.output
    if storage.is_remote(output):
        with storage.named_errors("--output", output):
            storage.glob(storage.join(output, "shard-*.json"))  # reachable before any work
    elif Path(output).exists() and not Path(output).is_dir():
        raise InputError(f"--output {output}: is a file; give the folder the shards go to")


def _pattern(path: str) -> bool:
    """A brace range, ``::`` list or glob rather than one file or folder."""
    return any(c in path for c in "{*?[") or "::" in path


def plan(args: argparse.Namespace, meta: dict) -> list:
    """The tasks over ``--input``: an input that holds nothing to prepare is an InputError
    here, before torch and the models load."""
    from datamodules.prepare.clips import plan_videos
    from datamodules.prepare.sources import plan_images

    if args.mode == "videos":
        return plan_videos(args.input, args.samples_per_shard, meta)
    with storage.named_errors("--input", args.input):
        return plan_images(args.input, args.samples_per_shard)


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the stats."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.mode == "videos" and not args.meta:
        parser.error("videos needs --meta (the clips' info json, celebvtext_info.json)")
    check_arguments(args)
    meta = (load_video_meta(args.meta, args.texts, tuple(args.text_extras))
            if args.mode == "videos" else {})
    tasks = plan(args, meta)
    # the models' modules (torch, detectors) load only now that the arguments and inputs hold
    from datamodules.prepare.annotate import SampleAnnotator
    from ldm_ext.perception.annotator import Filters
    from datamodules.prepare.engines import engine
    from datamodules.prepare.run import PrepareConfig, prepare
    from datamodules.prepare.sources import SourceFilter

    filters = Filters(args.min_faces, args.max_faces, args.min_face_size, args.min_score)
    annotator = SampleAnnotator(args.detector, args.pose, args.segmenter, args.parser,
                                characters=args.characters, human_parser=args.human_parser,
                                pose_weights=args.pose_weights, filters=filters)
    config = PrepareConfig(args.output, annotator, max_side=args.max_side,
                           previews=args.previews, source_filter=SourceFilter(
                               tuple(args.drop_nsfw), args.min_similarity),
                           batch_size=default_batch_size(args), meta=meta)
    return prepare(tasks, config, args.workers, engine(args.engine, args.gpus_per_worker))
