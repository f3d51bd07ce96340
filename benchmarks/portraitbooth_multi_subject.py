"""Cost of PortraitBooth's multi-subject composition (regions, blending, per-subject
conditioning) against plain batched generation doing the same UNet work.

    python -m benchmarks.portraitbooth_multi_subject [--device cpu|cuda] [--pairs 12]
        [--resolution 128] [--steps 20]

Both sides use the same SD1.5-shaped PortraitBooth (UNet and VAE at 1/5 of SD1.5's widths,
random weights), the same size, steps and Euler sampler, and one UNet call per step on a
batch of 4 (two subjects: negative prompt, shared prompt, each subject alone):

- composed: ``PortraitBoothPipeline`` with two identity crops: face features, STEA on each
  row, pose-template regions, the blend of the three conditional predictions every step;
- plain: the four prompts as text only, the same UNet call on the four rows, classifier-free
  guidance on the first two, the same decode.

Method, for a shared, noisy machine: after warm-up, many short pairs (one image each, who
goes first alternating), the figure is the median of the per-pair ratios; quartiles beside.
Times are wall clock on CUDA (synchronised); on the CPU this process's CPU time with
``--threads`` (default 1) intra-op threads, as ``attention_overhead.py`` measures: on a
shared 2-core machine wall time mostly measures the other processes.

Ends with ``RESULT portraitbooth_multi_subject_ratio=<composed/plain> goal<=1.10``.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.portraitbooth_random import random_portraitbooth
from benchmarks.timing import timed
from ldm_ext.attention import AttentionContext
from ldm_ext.pipelines.sampling import decode_images, denoise, initial_latents

GOAL = 1.10
PROMPT = "a photo of a man and a woman on the beach"


def plain_generation(pipe, size: tuple[int, int], steps: int, seed: int):
    """One image from text alone with the composition's UNet batch (4 rows) every step."""
    method = pipe.method
    text, _ = method.encode_text(["", PROMPT, PROMPT, PROMPT])
    latents = initial_latents(pipe.latent_shape(size), torch.Generator().manual_seed(seed),
                              method.device, text.dtype)
    ctx = AttentionContext(latent_hw=tuple(latents.shape[-2:]))  # one for all steps, as ours

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        rows = x[:1].expand(len(text), -1, -1, -1)
        return method.predict_noise(rows, t[:1].expand(len(text)), text, ctx)[:2]

    latents = denoise(pipe.scheduler, predict, latents, steps, 5.0, progress=False)
    return decode_images(method.vae, latents)[0]


def composed_generation(pipe, crops: torch.Tensor, size: tuple[int, int], steps: int,
                        seed: int):
    """One image of the two subjects composed region by region."""
    return pipe(PROMPT, crops, size=size, steps=steps, guidance=5.0, progress=False,
                generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch intra-op threads")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    method = random_portraitbooth(args.resolution).to(args.device).eval()
    pipe = method.pipeline(scheduler="euler")
    crops = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(1)) * 2 - 1
    size = (args.resolution, args.resolution)
    runs = {"composed": lambda s: composed_generation(pipe, crops, size, args.steps, s),
            "plain": lambda s: plain_generation(pipe, size, args.steps, s)}
    times: dict[str, list[float]] = {"composed": [], "plain": []}
    for pair in range(args.warmup + args.pairs):
        for name in (("composed", "plain") if pair % 2 else ("plain", "composed")):
            times[name].append(timed(lambda: runs[name](pair), args.device))
    ours, base = times["composed"][args.warmup:], times["plain"][args.warmup:]
    ratios = [a / b for a, b in zip(ours, base)]
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    print(f"median image: composed {statistics.median(ours):.3f} s, plain "
          f"{statistics.median(base):.3f} s; per-pair ratio quartiles {q1:.3f} / "
          f"{median:.3f} / {q3:.3f} ({args.pairs} pairs, {args.resolution} px, "
          f"{args.steps} steps, {args.device})")
    print(f"RESULT portraitbooth_multi_subject_ratio={statistics.median(ratios):.3f} "
          f"goal<={GOAL}")


if __name__ == "__main__":
    main()
