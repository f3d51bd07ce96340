"""``prepare`` throughput in batches (``--batch-size``) against one input at a time, images/s.

Inputs are frames of one size, as a clip's are (512x512: astronaut and a square cut of
insightface's t1 group photo, slightly rotated copies: one and several faces), the case
facenet-pytorch's MTCNN batches. One run is ``run_task`` of one shard holding all of them,
in this process on one intra-op thread (as one worker of either engine runs it): decoding,
detection, the other stages, writing the shard. SampleAnnotator: MTCNN, landmark pose, ellipse
masks, pose-hull characters (the stages whose weights ship with the packages). A pair is a
run with ``--batch-size`` and one with 1 (which goes first alternates); the ratio is the
median of the per-pair ratios. Both runs of a pair must keep and reject the same inputs.
Then MTCNN alone on the same frames, in the same way: ``detect_batch`` (the CPU's
``batch_pixels``: four frames per call) and all frames in one call, each against one
``detect`` per frame (why the CPU limits a call's pixels).

    python -m benchmarks.prepare_batch [--frames 16] [--batch-size 16] [--pairs 6]
        [--device cpu|cuda]

Ends with ``RESULT prepare_batch_ratio=<batched/one at a time> goal>=1.0``, the images/s
of each and the two detection ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from benchmarks.timing import Stopwatch
from datamodules.prepare import PrepareConfig, run_task
from datamodules.prepare.annotate import SampleAnnotator
from datamodules.prepare.sources import plan_images
from ldm_ext.face import MTCNNDetector
from ldm_ext.perception.annotator import Filters

GOAL = 1.0
SIDE = 512


def frames(folder: Path, count: int) -> None:
    """``count`` SIDE x SIDE frames with one or several faces, each copy rotated a little."""
    import insightface

    group = Image.open(os.path.join(os.path.dirname(insightface.__file__), "data", "images",
                                    "t1.jpg")).convert("RGB")
    top = (group.height - min(group.size)) // 2
    square = group.crop((300, top, 300 + min(group.size), top + min(group.size)))
    sources = [Image.fromarray(skimage.data.astronaut()), square.resize((SIDE, SIDE))]
    for i in range(count):
        sources[i % 2].rotate((i // 2) % 7 - 3).save(folder / f"frame{i:05d}.png")


def timed_run(source: Path, out: Path, annotator: SampleAnnotator, batch_size: int
              ) -> tuple[float, dict]:
    """(images/s, stats) of one shard of every frame in ``source``."""
    config = PrepareConfig(str(out), annotator, previews=0, batch_size=batch_size)
    (task,) = plan_images(str(source), 1 << 30)
    clock = Stopwatch("cpu")
    clock.start()
    stats = run_task(task, config)
    return stats["inputs"] / clock.elapsed(), stats


def detection_ratios(source: Path, pairs: int, device: str = "cpu") -> dict[str, float]:
    """Median images/s ratios of MTCNN's ``detect_batch`` (CPU limit; no limit) against one
    ``detect`` per frame, interleaved (the order alternates per pair)."""
    images = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(source.iterdir())]
    limited = MTCNNDetector(device=device)
    unlimited = MTCNNDetector(batch_pixels=1 << 40, device=device)
    runs = {"single": lambda: [limited.detect(image) for image in images],
            "limited": lambda: limited.detect_batch(images),
            "unlimited": lambda: unlimited.detect_batch(images)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    clock = Stopwatch(device)
    for pair in range(pairs):
        for name in (list(runs) if pair % 2 == 0 else list(runs)[::-1]):
            clock.start()
            runs[name]()
            seconds[name].append(clock.elapsed())
    return {name: statistics.median(one / t for one, t in zip(seconds["single"], seconds[name]))
            for name in ("limited", "unlimited")}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--device", default="cpu",
                        help="the annotator's models (cuda: as a GPU worker runs them)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    annotator = SampleAnnotator("mtcnn", pose="faces", segmenter="ellipse", characters="pose-hull",
                                filters=Filters(min_face_size=20), device=args.device)
    rates: dict[int, list[float]] = {args.batch_size: [], 1: []}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "in")
        source.mkdir()
        frames(source, args.frames)
        kept = timed_run(source, Path(tmp, "warm"), annotator, 1)[1]  # models built here
        assert kept["kept"] > 0, kept
        for pair in range(args.pairs):
            order = (args.batch_size, 1) if pair % 2 == 0 else (1, args.batch_size)
            for size in order:
                rate, stats = timed_run(source, Path(tmp, f"{size}-{pair}"), annotator, size)
                assert (stats["kept"], stats["rejected"]) == (kept["kept"], kept["rejected"])
                rates[size].append(rate)
        detect = detection_ratios(source, args.pairs, args.device)
    ratio = statistics.median(b / o for b, o in zip(rates[args.batch_size], rates[1]))
    print(f"{args.frames} frames {SIDE}x{SIDE} in one shard, batch {args.batch_size} vs 1, "
          f"{args.pairs} pairs, one thread, models on {args.device}:")
    for size, values in rates.items():
        print(f"  batch {size}: images/s {[round(v, 2) for v in values]}")
    print(f"RESULT prepare_batch_ratio={ratio:.3f} goal>={GOAL} "
          f"images_per_s_batched={statistics.median(rates[args.batch_size]):.2f} "
          f"images_per_s_one_at_a_time={statistics.median(rates[1]):.2f} "
          f"detect_ratio={detect['limited']:.3f} "
          f"detect_ratio_one_call={detect['unlimited']:.3f}")
    return ratio


if __name__ == "__main__":
    main()
