"""Images/s of the batched scorers vs scoring one image at a time, same process, same code.

Both sides run ``callbacks.scoring.score_images`` (MTCNN detection + FaceNet identity,
CLIP text score, all per-image metrics) over the same images and records; the batched
side gets all images in one call with ``batch_size`` images per network call (MTCNN
detects same-size images in one call), the other calls it once per image with batch
size 1. Networks are random-init (FaceNet, CLIP ``--clip``, default the protocol's
ViT-L/14): weights do not change the cost, and nothing needs downloading. Images are
512x512 crops of the offline photos (skimage astronaut, insightface t1.jpg), so MTCNN
finds and encodes real faces. The sides alternate over ``--rounds``; medians compared.

    python benchmarks/scoring_throughput.py [--device cpu|cuda] [--images 16] [--batch 16]

Ends with ``RESULT scoring_throughput_ratio=<batched/single images per s> goal>=2``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callbacks.scoring import References, Scorers, score_images  # noqa: E402
from callbacks.prompts import fill, prompt_list  # noqa: E402
from callbacks.scorers import CLIPScorer, FaceScorer  # noqa: E402
from ldm_ext.face import FaceNetEncoder, MTCNNDetector  # noqa: E402

GOAL = 2.0


def workload(count: int) -> tuple[list[np.ndarray], list[dict]]:
    """``count`` 512x512 images with one or more faces, and single-subject records."""
    import insightface
    import skimage.data

    t1 = Image.open(os.path.join(os.path.dirname(insightface.__file__), "data", "images",
                                 "t1.jpg")).convert("RGB")
    sources = [Image.fromarray(skimage.data.astronaut()), t1.crop((0, 0, 640, 640)),
               t1.crop((640, 0, 1280, 640)), t1.crop((300, 100, 800, 600))]
    prompts = prompt_list("fastcomposer_single")
    images, records = [], []
    for i in range(count):
        source = sources[i % len(sources)]
        if (i // len(sources)) % 2:
            source = source.transpose(Image.FLIP_LEFT_RIGHT)
        images.append(np.asarray(source.resize((512, 512), Image.BICUBIC)))
        prompt = prompts[i % len(prompts)]
        records.append({"file": f"{i}.png", "subjects": ["ref"], "category": prompt.category,
                        "prompt_index": prompt.index, "clip_prompt": fill(prompt.template,
                                                                           ["woman"])})
    return images, records


def build(batch: int, clip: CLIPScorer, encoder: FaceNetEncoder, device: str) -> Scorers:
    """Scorers sharing the networks, differing only in batch size."""
    clip_view = CLIPScorer.__new__(CLIPScorer)
    clip_view.__dict__.update({**clip.__dict__, "batch_size": batch, "_text_cache": {}})
    faces = FaceScorer(MTCNNDetector(min_score=0.0, device=device), encoder, batch)
    return Scorers(faces, clip_t=clip_view)


def part_times(batched: Scorers, single: Scorers, images: list[np.ndarray]) -> dict:
    """Seconds per part, batched vs one image (or crop) at a time: where the ratio comes
    from (e.g. a compute-bound CLIP on a CPU gains little from batching)."""
    faces = batched.faces.detect(images)
    crops = torch.cat([f.crops for f in faces])
    parts = {
        "face detection": (lambda: batched.faces.detect(images),
                           lambda: [single.faces.detect([im]) for im in images]),
        "face encoding": (lambda: batched.faces.encode(crops),
                          lambda: [single.faces.encode(c) for c in crops.split(1)]),
        "CLIP images": (lambda: batched.clip_t.encode_images(images),
                        lambda: [single.clip_t.encode_images([im]) for im in images]),
    }
    return {name: (timed(many), timed(one)) for name, (many, one) in parts.items()}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clip", default="ViT-L-14")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    images, records = workload(args.images)
    clip = CLIPScorer(args.clip, "random", args.device, args.batch)
    encoder = FaceNetEncoder("random").to(args.device)
    batched, single = (build(b, clip, encoder, args.device) for b in (args.batch, 1))
    refs = References({"ref": single.faces.references(images[:1])[0]})
    score_images(batched, images[:2], records[:2], refs)  # warm-up
    times: dict[str, list[float]] = {"batched": [], "single": []}
    for _ in range(args.rounds):
        batched.clip_t._text_cache, single.clip_t._text_cache = {}, {}
        times["batched"].append(timed(lambda: score_images(batched, images, records, refs)))
        times["single"].append(timed(lambda: [score_images(single, [im], [r], refs)
                                              for im, r in zip(images, records)]))
    rates = {k: args.images / statistics.median(v) for k, v in times.items()}
    print(f"device={args.device} images={args.images} batch={args.batch} clip={args.clip} "
          f"threads={torch.get_num_threads()}")
    for side, rate in rates.items():
        print(f"{side:8s} {rate:7.2f} images/s  (rounds: "
              + ", ".join(f"{t:.1f}s" for t in times[side]) + ")")
    for part, (many, one) in part_times(batched, single, images).items():
        print(f"  {part:15s} batched {many:6.1f}s  single {one:6.1f}s  ratio {one / many:.2f}")
    ratio = rates["batched"] / rates["single"]
    print(f"RESULT scoring_throughput_ratio={ratio:.3f} goal>={GOAL:g}")
    return ratio


if __name__ == "__main__":
    main()
