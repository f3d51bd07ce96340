"""Generate images with any trained method: ``python -m ldm_ext.generate --run RUN ...``.

A thin shell over the Python API (``ldm_ext/api.py``): the flags become the keywords of
``load_pipeline(RUN, device)(prompt, ...)``, so both give the same images for a seed.
``--run`` is a run folder (``train.py``), an export folder (``ldm_ext.export``) or a
weights file inside a run. The method comes from the run's config through the registry;
its own flags are the inputs its config declares (``GENERATION_INPUTS``, e.g.
InstantFamily's ``--ids`` / ``--group`` / ``--pose``), listed by
``python -m ldm_ext.generate --run RUN --help``::

    python -m ldm_ext.generate --run runs/demo --ids a.jpg b.jpg \\
        --prompt "a photo of two people on the beach" --out out.png --sampler unipc

Mistakes the flags and files show (a size, a missing or unreadable photo or pose file,
more identities than the method takes, weights of another run) stop with one line before
torch is imported; a device this machine lacks, before the model loads. Nothing is written
before the images are made. ``--num-images N`` writes ``--out`` for N = 1, else
``<stem>_<k><suffix>`` for k = 0 … N-1 (k zero-padded to one width); image k is drawn with
generator (seed, k), so it is the same image whatever N is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldm_ext.cli import ArgumentParser, InputError, positive_int, run_cli
from ldm_ext.config import SAMPLERS

FLAGS_HINT = "--help lists the flags; with --run RUN, its method's"
METHOD_FLAGS = ("Each method adds its own flags (identity photos, pose, scales): "
                "python -m ldm_ext.generate --run RUN --help lists those of RUN's method.")


def common_parser(add_help: bool, epilog: str | None = METHOD_FLAGS) -> argparse.ArgumentParser:
    """The flags every method shares."""
    # mistakes are InputErrors: run_cli tells them as every other generate mistake
    parser = ArgumentParser(prog="python -m ldm_ext.generate", add_help=add_help,
                            description=__doc__.split("\n\n")[0], epilog=epilog,
                            raise_errors=True, hint=FLAGS_HINT)
    parser.add_argument("--run", help="run folder, export folder, or weights inside a run (a "
                        "file or a DeepSpeed checkpoint folder); required")
    parser.add_argument("--prompt", help="what to generate (required)")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--out", default="generated.png",
                        help="image file; with --num-images N > 1: <stem>_<k><suffix>")
    parser.add_argument("--num-images", type=positive_int, default=1,
                        help="images to make, image k with generator (seed, k)")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="square side in pixels, a multiple of 8 (default: the pose "
                             "file's size, else the training resolution)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="default: method.sample_steps")
    parser.add_argument("--guidance", type=float, default=None,
                        help="default: method.guidance_scale")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="diffusers scheduler (default: method.sampler)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    return parser


def parse_args(argv: list[str]):
    """(flags, the run's config, the method's inputs): the shared flags and those the run's
    method declares, parsed before anything heavy loads. ``--help`` without ``--run``
    lists the shared flags and how to see a method's."""
    from ldm_ext.api import request_config
    from ldm_ext.pipelines.options import add_flags
    from ldm_ext.registry import method_spec

    known, _ = common_parser(add_help=False).parse_known_args(argv)
    if known.run is None:
        parser = common_parser(add_help=True)
        parser.parse_args(argv)  # prints --help and exits, or reports unknown flags
        parser.error("--run is required")
    cfg = request_config(known.run)
    inputs = method_spec(cfg.method.name).config_class.GENERATION_INPUTS
    parser = common_parser(add_help=True, epilog=None)
    add_flags(parser.add_argument_group(f"{cfg.method.name} inputs"), inputs)
    args = parser.parse_args(argv)
    if not args.prompt:
        parser.error("--prompt is required")
    return args, cfg, inputs


def output_paths(out: Path, count: int) -> list[Path]:
    """Where ``count`` images go: ``out`` for one, ``<stem>_<k><suffix>`` for several (k
    zero-padded to the width of count - 1); an InputError unless ``out`` names an image
    file PIL can write."""
    if out.suffix.lower() not in registered_image_suffixes():
        raise InputError(f"--out {out}: not an image file name (e.g. .png, .jpg)")
    if count == 1:
        return [out]
    width = len(str(count - 1))
    return [out.with_name(f"{out.stem}_{k:0{width}d}{out.suffix}") for k in range(count)]


def registered_image_suffixes() -> set[str]:
    """File suffixes PIL can write an image to."""
    from PIL import Image

    return {suffix for suffix, kind in Image.registered_extensions().items()
            if kind in Image.SAVE}


def main(argv: list[str] | None = None) -> list[Path]:
    """Check the flags, load the run through the Python API, generate, save the images."""
    from ldm_ext.api import check_request, load_pipeline
    from ldm_ext.pipelines.options import from_args

    argv = list(sys.argv[1:] if argv is None else argv)
    args, cfg, inputs = parse_args(argv)
    values = from_args(args, inputs)
    outs = output_paths(Path(args.out), args.num_images)
    check_request(cfg, values, args.size, args.num_images, args.steps, args.sampler)
    pipe = load_pipeline(args.run, device=args.device)
    result = pipe(args.prompt, num_images=args.num_images, seed=args.seed, steps=args.steps,
                  guidance=args.guidance, negative_prompt=args.negative_prompt,
                  size=args.size, sampler=args.sampler, **values)
    for image, out in zip(result.images, outs):
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out)
        print(f"wrote {out} ({cfg.method.name}, {image.height}x{image.width})")
    return outs


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="generate"))
