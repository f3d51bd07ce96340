"""Benchmark runs on the FastComposer protocol (docs/benchmark.md) and each paper's metrics.

Generate and score::

    python eval.py --config configs/eval/fastcomposer_single.yaml --checkpoint runs/x \
        subjects.root=data/celeba_test_single [key=value ...]

Per-identity methods (e.g. SeFi-IDE) take one fitted checkpoint per subject
(``subjects.checkpoints``); with ``subjects.fit=true`` the subjects without one are fitted
first, with the recipe of ``--checkpoint`` (a fitted run, or an experiment YAML)::

    python eval.py --config configs/eval/sefi_ide.yaml \
        --checkpoint configs/experiment/sefi_ide_sd15.yaml subjects.root=data/celeba_test_single

Score images made by anything (another repository's outputs included)::

    python eval.py --images DIR --references SUBJECTS_DIR [--config X.yaml] [key=value ...]

Subjects (``--references`` / ``subjects.root``): ``<root>/<id>/<photo>`` (largest face of
the first photo, sorted by name) and ``<root>/classes.txt`` with lines ``<id> <class
word>`` (FastComposer's test-set layout; the 15 CelebA ids default to docs/benchmark.md's
classes). ``subjects.root=demo`` writes offline demo subjects (skimage astronaut and the
faces of insightface's t1.jpg).

Image naming (both modes): ``<id>[+<id>...]__p<prompt index, 2 digits>__<k>.png``, e.g.
``000001+001603__p07__3.png`` is image k=3 of multi prompt 7 for that pair, the ids in slot
order. In ``--images`` mode, a ``manifest.jsonl`` in DIR (lines as eval.py writes them, at
least ``file`` and ``subjects``; ``prompt_index``/``category``/``clip_prompt`` are filled
from the prompt set when absent) takes precedence over the file names. A name outside the
scheme, a prompt index outside the prompt set, a subject id the references lack or an
empty folder stops the run before any model loads, in one line naming the file; an image
that cannot be read is skipped and listed in ``report.md`` and ``summary.json``.

Identity is scored by the protocol's encoder (``identity``) and by a second, independent
one (``identity_second``; ``scoring.second_encoder``, default auto: ArcFace buffalo_l where
present, else dlib), beside the method's own face encoder (``method_encoder``, from the
run's config; give it for ``--images``), their rank correlation and warnings where they
disagree (README "Why two face encoders").

Outputs in ``<output_dir>/<name>/``: ``images/`` + ``manifest.jsonl`` (generation mode;
image i of the plan draws from its own generator (seed, i), so a rerun skips finished
images and still matches an uninterrupted run), ``metrics.csv`` (one row per image),
``summary.json`` (mean ± population std per metric, per prompt category and per number of
subjects; mixing matrices; ``identity_check``), ``report.md`` with tables, ``grids/`` and
``plots/``; with ``wandb=true`` a wandb run in ``wandb/`` (its id kept in ``wandb_id``): the
summary metrics, a table of every image with its reference photos, prompt, N and metrics,
the plots and grids. ``--compare A B --wandb`` logs the comparison's table, plots and grids.

Results cannot mix (``ldm_ext/evaluation/provenance.py``): ``provenance.json`` binds the folder to
the checkpoint (path and weights sha256) or ``--images`` folder, the method, the
image-deciding config, the subjects and the code version; a run into a folder made by
anything else stops in one line naming each difference (whether ``name`` came from the
YAML or the command line: pick another ``name=``). ``--compare`` refuses results of
different protocols, naming the fields. Random-init scorers are drawn from
``scoring.seed``, a run's random frozen parts from its ``seed``; ``summary.json`` and
``report.md`` record all of it with the device and library versions.
"""
from __future__ import annotations

import argparse

from ldm_ext.cli import ArgumentParser, run_cli

BINDING = """\
results/<name> is bound to what made it (provenance.json): the checkpoint (path, weights
sha256) or --images folder, the method, the config fields that decide the images, the
subjects and the code version. A rerun resumes it only when all match; otherwise it stops
in one line naming each difference, whether name came from the YAML or the command line:
pick another name=. Scoring settings may change (every score is recomputed)."""


def protocol_help() -> str:
    """``--help``'s list of the protocols (``configs/eval/*.yaml``), one line each."""
    from ldm_ext.eval_config import protocols

    found = protocols()
    width = max(map(len, found), default=0)
    return "protocols (--config configs/eval/NAME.yaml):\n" + "\n".join(
        f"  {name:<{width}}  {text}" for name, text in found.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``eval.py``'s arguments: one of --checkpoint, --images or --compare, and what each
    mode takes (a wrong mix is argparse's one-line error, exit 2)."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            epilog=f"{BINDING}\n\n{protocol_help()}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="eval YAML (configs/eval/*.yaml)")
    parser.add_argument("--checkpoint", help="run or export folder, or weights in a run (a file, a "
                                             "DeepSpeed checkpoint folder) "
                                             "(per-identity methods: or an experiment YAML)")
    parser.add_argument("--images", help="score this folder instead of generating")
    parser.add_argument("--references", help="subjects folder (overrides subjects.root)")
    parser.add_argument("--compare", nargs="+", metavar="RESULT",
                        help="one report comparing finished results/<name> folders of one "
                             "protocol (prompt set, subjects, N plan, images per prompt, "
                             "seed, size, scorers but the second identity encoder; a "
                             "difference is refused, named)")
    parser.add_argument("--out", help="--compare's folder (default: compare_<names> beside "
                                      "the first result)")
    parser.add_argument("--wandb", action="store_true",
                        help="--compare: also log the comparison (table, plots, grids) to "
                             "wandb (offline unless WANDB_API_KEY is set)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. generation.steps=25")
    args = parser.parse_args(argv)
    if args.compare:
        if args.checkpoint or args.images or args.config or args.references or args.overrides:
            parser.error("--compare takes result folders only (no --checkpoint, --images, "
                         "--config, --references or key=value)")
        if len(args.compare) < 2:
            parser.error("--compare needs two or more result folders")
        return args
    if args.out or args.wandb:
        parser.error("--out and --wandb go with --compare (a run writes to "
                     "<output_dir>/<name>; its wandb run: wandb=true)")
    if bool(args.images) == bool(args.checkpoint):
        parser.error("give exactly one of --checkpoint (generate), --images (score a folder) "
                     "or --compare (compare results)")
    if args.checkpoint and not args.config:
        parser.error("--checkpoint needs --config")
    return args


def evaluate(argv: list[str] | None) -> int:
    """``--compare`` finished results, or run (generate or take images, then score)."""
    args = parse_args(argv)
    if args.compare:
        from ldm_ext.evaluation.compare import compare

        print(f"wrote {compare(args.compare, args.out, args.wandb) / 'report.md'}")
    else:
        from ldm_ext.evaluation.run import run

        run(args.config, args.overrides, checkpoint=args.checkpoint, images=args.images,
            references=args.references)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 done; 2 a config, input or missing-weights mistake, told in one line."""
    return run_cli(evaluate, argv, prog="eval")
