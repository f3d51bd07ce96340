"""Generate images with any trained method: ``python -m ldm_ext.generate --run RUN ...``.

``--run`` is a run folder (``train.py``), an export folder (``ldm_ext.export``) or a weights
file inside a run. The method comes from the run's config through the registry; its
pipeline adds its own flags (e.g. InstantFamily's ``--ids`` / ``--group`` / ``--pose``), listed
by ``python -m ldm_ext.generate --run RUN --help``::

    python -m ldm_ext.generate --run runs/demo --ids a.jpg b.jpg \\
        --prompt "a photo of two people on the beach" --out out.png --sampler unipc
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldm_ext.cli import InputError, positive_int, run_cli
from ldm_ext.config import SAMPLERS


def common_parser(add_help: bool) -> argparse.ArgumentParser:
    """The flags every method shares."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument("--run", required=True,
                        help="run folder, export folder, or weights inside a run (a "
                        "file or a DeepSpeed checkpoint folder)")
    parser.add_argument("--prompt", help="what to generate (required)")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--out", default="generated.png")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="square side in pixels (default: training resolution)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="default: method.sample_steps")
    parser.add_argument("--guidance", type=float, default=None,
                        help="default: method.guidance_scale")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="diffusers scheduler (default: method.sampler)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The shared flags and those of the run's method (its pipeline's ``add_arguments``),
    parsed before any weights load, so a flag mistake costs no loading."""
    from ldm_ext.config import load_config
    from ldm_ext.methods.loading import RUN_CONFIG, run_folder
    from ldm_ext.registry import method_spec

    known, _ = common_parser(add_help=False).parse_known_args(argv)
    run_dir, _ = run_folder(known.run)
    parser = common_parser(add_help=True)
    method = load_config(run_dir / RUN_CONFIG).method.name
    method_spec(method).pipeline_class.add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.prompt:
        parser.error("--prompt is required")
    out = Path(args.out)
    if out.suffix.lower() not in registered_image_suffixes():
        raise InputError(f"--out {out}: not an image file name (e.g. .png, .jpg)")
    return args


def registered_image_suffixes() -> set[str]:
    """File suffixes PIL can write an image to."""
    from PIL import Image

    return {suffix for suffix, kind in Image.registered_extensions().items()
            if kind in Image.SAVE}


def main(argv: list[str] | None = None) -> Path:
    """Load the run, parse the method's own flags, generate one image, save it."""
    from ldm_ext.methods.loading import load_run
    from ldm_ext.pipelines.sampling import image_generator

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    method = load_run(args.run).to(args.device)
    cfg = method.cfg.method
    pipe = method.pipeline(scheduler=args.sampler or cfg.sampler)
    side = args.size or method.cfg.data.resolution
    inputs = {"size": (side, side), **pipe.inputs_from_args(args)}
    image = pipe(args.prompt, inputs.pop("identities"), steps=args.steps or cfg.sample_steps,
                 guidance=args.guidance if args.guidance is not None else cfg.guidance_scale,
                 generator=image_generator(args.seed, 0),
                 negative_prompt=args.negative_prompt, **inputs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out} ({cfg.name}, {image.height}x{image.width})")
    return Path(args.out)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="generate"))
