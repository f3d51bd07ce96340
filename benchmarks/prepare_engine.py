"""``prepare`` throughput: the Ray engine against the local engine, in images/s.

Both prepare the same folder of photos (astronaut and insightface's t1 group photo, 512 px,
slightly rotated copies: one and six faces) with the same annotator (MTCNN, landmark pose,
ellipse masks, pose-hull characters: the stages whose weights ship with the packages) on
the same number of worker processes, into fresh output folders, in turns: a pair is one run
of each (which goes first alternates) and the ratio is the median of the per-pair ratios.
A run is ``prepare``'s work driven here, to time each shard as it finishes: planning,
workers starting and loading their models, annotating, writing shards, ``stats.json``. The
local Ray is
started once before the pairs (a cluster exists before a job is sent to it, as this
process exists before its pool forks); its actors start inside every timed run. The two
outputs of a pair must be byte-identical.

    python -m benchmarks.prepare_engine [--images 160] [--per-shard 8] [--workers 2]
        [--pairs 8]

Ends with ``RESULT prepare_engine_ratio=<ray/local> goal>=0.9``: the ratio of images/s once
every worker has finished its first shard, the rate a LAION-Face job (hours) runs at; on
the same line the ratio of whole runs of this size, Ray's start-up (its actors are new
processes that import torch and load their models; the local pool forks this process) and
the images/s per worker of each engine (the sizing figure of README's table).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
from pathlib import Path

import skimage.data
from PIL import Image

from benchmarks.timing import Stopwatch
from datamodules.prepare import PrepareConfig, run_task, summarise
from datamodules.prepare.annotate import SampleAnnotator
from datamodules.prepare.engines import connect, engine
from datamodules.prepare.sources import plan_images
from ldm_ext.perception.annotator import Filters

GOAL = 0.9


def photos(folder: Path, count: int) -> None:
    """``count`` 512-px photos with one or six faces, each copy rotated a little."""
    import insightface

    group = Image.open(os.path.join(os.path.dirname(insightface.__file__), "data", "images",
                                    "t1.jpg")).convert("RGB")
    sources = [Image.fromarray(skimage.data.astronaut()), group]
    for i in range(count):
        image = sources[i % 2].copy()
        image.thumbnail((512, 512))
        image.rotate((i // 2) % 7 - 3).save(folder / f"img{i:05d}.jpg", quality=92)


def timed_run(source: Path, out: Path, name: str, args: argparse.Namespace) -> dict:
    """One whole run of engine ``name`` (as ``prepare`` runs it, stats.json included):
    images/s of the whole run, the start-up (seconds until the first shard is done: worker
    processes, imports, models) and images/s after each worker's first shard."""
    annotator = SampleAnnotator("mtcnn", pose="faces", segmenter="ellipse", characters="pose-hull",
                                filters=Filters(min_face_size=20))
    config = PrepareConfig(str(out), annotator, previews=0)
    tasks = plan_images(str(source), args.per_shard)
    clock, done = Stopwatch("cpu"), []
    clock.start()
    for stats in engine(name)(run_task, config, tasks, args.workers):
        done.append((clock.elapsed(), stats["inputs"]))
    total = summarise(str(out))
    end = clock.elapsed()
    assert total["inputs"] == args.images and total["kept"] > 0, total
    warm = done[args.workers - 1][0]  # every worker has finished its first shard
    return {"whole": args.images / end, "startup": done[0][0],
            "steady": sum(n for _, n in done[args.workers:]) / (done[-1][0] - warm)}


def same_shards(one: Path, two: Path) -> bool:
    names = sorted(p.name for p in one.glob("shard-*"))
    return names == sorted(p.name for p in two.glob("shard-*")) and all(
        (one / n).read_bytes() == (two / n).read_bytes() for n in names + ["stats.json"])


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--per-shard", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args(argv)
    shards = math.ceil(args.images / args.per_shard)
    if shards <= args.workers:  # the steady rate is timed after each worker's first shard
        parser.error(f"--images {args.images} at --per-shard {args.per_shard} make {shards} "
                     f"shards: the steady rate needs more shards than --workers "
                     f"({args.workers})")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local benchmark cluster
    # Ray runs its workers at nice 15 (the raylet keeps priority on a dedicated node); on a
    # host shared with other jobs that alone made them 3x slower than the pool's processes
    os.environ.setdefault("RAY_worker_niceness", "0")
    connect(args.workers)
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "in")
        source.mkdir()
        photos(source, args.images)
        for pair in range(args.pairs):
            order = ("local", "ray") if pair % 2 == 0 else ("ray", "local")
            for name in order:
                runs[name].append(timed_run(source, Path(tmp, f"{name}{pair}"), name, args))
            assert same_shards(Path(tmp, f"local{pair}"), Path(tmp, f"ray{pair}"))
    print(f"{args.images} photos (512 px, 1 or 6 faces), {args.per_shard} per shard, "
          f"{args.workers} workers, {args.pairs} pairs (outputs byte-identical in each):")
    for name, values in runs.items():
        for key in ("whole", "startup", "steady"):
            print(f"  {name} {key}: {[round(v[key], 2) for v in values]}")
    ratio = {key: statistics.median(r[key] / lo[key] for r, lo in zip(runs["ray"],
                                                                       runs["local"]))
             for key in ("whole", "steady")}
    startup = statistics.median(r["startup"] for r in runs["ray"])
    per_worker = {k: statistics.median(v["steady"] for v in vs) / args.workers
                  for k, vs in runs.items()}
    print(f"RESULT prepare_engine_ratio={ratio['steady']:.3f} goal>={GOAL} "
          f"whole_run_ratio={ratio['whole']:.3f} ray_startup_s={startup:.1f} "
          f"images_per_s_per_worker_local={per_worker['local']:.2f} "
          f"images_per_s_per_worker_ray={per_worker['ray']:.2f}")
    return ratio["steady"]


if __name__ == "__main__":
    main()
