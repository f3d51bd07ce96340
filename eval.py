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
import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ldm_ext.evaluation.metric_names import overall_lines
from ldm_ext.evaluation.published import display_for
from ldm_ext.evaluation.report import write_outputs
from ldm_ext.evaluation.subjects import load_subjects, plan, records_from_folder
from ldm_ext.cli import ArgumentParser, InputError, open_image, run_cli


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


# ----- generation (resumable) -------------------------------------------------------------
def load_method(checkpoint: str):
    """A trained method from a run folder, an export folder, or a weights file inside a
    run (``trainable.safetensors``, ``<run>/checkpoints/*.ckpt``); or, for per-identity
    methods whose subjects bring their own weights, from an experiment YAML."""
    from ldm_ext.methods.loading import build_method, load_run

    if is_experiment(checkpoint):
        from ldm_ext.config import load_config

        return build_method(load_config(checkpoint)).eval()
    return load_run(checkpoint)


def is_experiment(checkpoint: str) -> bool:
    return Path(checkpoint).suffix in (".yaml", ".yml") and Path(checkpoint).is_file()


def fit_subjects(cfg, checkpoint: str, subjects: dict[str, dict], out_dir: Path) -> dict:
    """Subject id -> weights: ``subjects.checkpoints``, plus (``subjects.fit``) every
    subject without one fitted now from its photo by ``ldm_ext.fit`` with the recipe of
    ``checkpoint`` (its run's config, or the experiment YAML) into ``<out_dir>/fitted/<id>``.
    A finished fit is reused and an interrupted one resumes, so a rerun fits what is left."""
    from ldm_ext.config import ConfigError

    fitted = dict(cfg.subjects.checkpoints or {})
    if is_experiment(checkpoint) and not cfg.subjects.fit and set(subjects) - fitted.keys():
        raise ConfigError(f"--checkpoint {checkpoint} is a config: it holds no weights, so "
                          "every subject needs subjects.checkpoints or subjects.fit=true")
    if not cfg.subjects.fit:
        return fitted
    from ldm_ext.fit import fit_config, fit_identity
    from ldm_ext.methods.loading import RUN_CONFIG, run_folder

    recipe = checkpoint if is_experiment(checkpoint) else run_folder(checkpoint)[0] / RUN_CONFIG
    for sid in sorted(set(subjects) - fitted.keys()):
        run = fit_config(recipe, subjects[sid]["photo"], sid, output_dir=out_dir / "fitted",
                         literal=not is_experiment(checkpoint))
        fitted[sid] = str(fit_identity(run))
    return fitted


def subject_identities(pipe, subjects: dict[str, dict], fitted: dict[str, str]) -> dict:
    """Each subject's identity for the pipeline: from the weights fitted to them when
    ``fitted`` names one checkpoint per subject (``fit_subjects``, per-identity methods),
    otherwise from their photo."""
    from ldm_ext.config import ConfigError

    if fitted:
        missing = sorted(set(subjects) - fitted.keys())
        if missing:
            raise ConfigError(f"subjects.checkpoints has no checkpoint for {missing[:5]}")
        return {sid: pipe.identity_from_weights(fitted[sid]) for sid in subjects}
    return {sid: photo_identity(pipe, sid, s["photo"]) for sid, s in subjects.items()}


def photo_identity(pipe, sid: str, photo: str):
    """The pipeline's identity of subject ``sid`` from its photo; a photo that cannot be
    read, or in which the pipeline finds no face, is an InputError naming both."""
    image = open_image(photo, f"subject {sid}: photo")
    try:
        return pipe.identity(image)
    except InputError as err:
        raise InputError(f"subject {sid}: {photo}: {err}") from None


def read_manifest(path: Path) -> dict[str, dict]:
    """Finished records by file name (a torn last line from an interrupt is ignored)."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["file"]] = record
    return done


def generate(cfg, method, subjects: dict[str, dict], records: list[dict], out_dir: Path,
             fitted: dict[str, str]) -> None:
    """Generate every planned image not already in the manifest, appending as it goes.

    Image i of the plan draws from its own generator seeded (``generation.seed``, i), so a
    resumed run produces exactly the images of an uninterrupted one, whatever the sampler
    (``generation.sampler``, default the method's) draws."""
    from tqdm.auto import tqdm

    from ldm_ext.pipelines.sampling import image_generator

    g = cfg.generation
    image_dir, manifest = out_dir / "images", out_dir / "manifest.jsonl"
    image_dir.mkdir(parents=True, exist_ok=True)
    done = {f for f in read_manifest(manifest) if (image_dir / f).is_file()}
    pipe = method.pipeline(scheduler=g.sampler or method.cfg.method.sampler)
    identities = subject_identities(pipe, subjects, fitted)
    todo = [(i, r) for i, r in enumerate(records) if r["file"] not in done]
    with manifest.open("a") as handle:
        for index, record in tqdm(todo, desc="generating", unit="image"):
            image = pipe(record["prompt"], [identities[s] for s in record["subjects"]],
                         size=(g.size, g.size), steps=g.steps, guidance=g.guidance,
                         generator=image_generator(g.seed, index), progress=False)
            image.save(image_dir / record["file"])
            handle.write(json.dumps({**record, "method": method.cfg.method.name,
                                     "family": method.cfg.model.family,
                                     "seed": g.seed, "index": index}) + "\n")
            handle.flush()


# ----- scoring and outputs ----------------------------------------------------------------
def score_folder(cfg, image_dir: Path, records: list[dict], subjects: dict[str, dict],
                 device: str) -> tuple[list[dict], list[np.ndarray], list[dict]]:
    """Metrics rows and similarity matrices of every readable image, in chunks, with a
    progress bar and ETA (a protocol run scores thousands of images), and the images that
    could not be read (``{"file", "reason"}``: skipped, counted, listed in the report)."""
    from tqdm import tqdm

    from ldm_ext.evaluation.scoring import build_scorers, embed_references, score_images

    scorers = build_scorers(cfg.scoring, device)
    photos = {sid: np.asarray(open_image(s["photo"], f"subject {sid}: photo"))
              for sid, s in subjects.items()}
    refs = embed_references(scorers, photos)
    rows, sims, skipped, chunk = [], [], [], max(1, cfg.scoring.batch_size) * 4
    with tqdm(total=len(records), desc="scoring", unit="image") as bar:
        for start in range(0, len(records), chunk):
            images, part, unread = read_images(image_dir, records[start:start + chunk])
            skipped += unread
            if part:
                new_rows, new_sims = score_images(scorers, images, part, refs)
                rows += new_rows
                sims += new_sims
            bar.update(len(part) + len(unread))
    if not rows:
        raise InputError(f"{image_dir}: none of its {len(records)} images could be read "
                         f"(first: {skipped[0]['file']}: {skipped[0]['reason']})")
    return rows, sims, skipped


def read_images(image_dir: Path, records: list[dict]) -> tuple[list, list[dict], list[dict]]:
    """(RGB arrays, their records) of the readable images of ``records``, and a
    ``{"file", "reason"}`` entry per image that is missing or cannot be decoded."""
    images, kept, unread = [], [], []
    for record in records:
        try:
            images.append(np.asarray(open_image(image_dir / record["file"])))
            kept.append(record)
        except InputError as err:
            unread.append({"file": record["file"], "reason": str(err)})
    return images, kept, unread


# ----- entry ------------------------------------------------------------------------------
def resolve_device(name: str) -> str:
    """The torch device of ``generation.device``: ``auto`` is cuda where a GPU is visible,
    else cpu; ``cuda`` without one is a ConfigError. Asked without importing torch where
    the machine plainly has no GPU (``ldm_ext.devices``)."""
    from ldm_ext.config import ConfigError
    from ldm_ext.devices import cuda_device_count

    if name == "cpu":
        return name
    found = cuda_device_count() > 0
    if name == "cuda" and not found:
        raise ConfigError("generation.device=cuda: no CUDA GPU is visible on this machine; "
                          "use generation.device=cpu (or auto)")
    return "cuda" if found else "cpu"


def run(args: argparse.Namespace) -> Path:
    """Generate (``--checkpoint``) or take a folder (``--images``), score, write outputs.
    The device, the checkpoint's folder and the names, prompt indices and subject ids of an
    ``--images`` folder are checked before any model loads and before the results folder
    (or the demo subjects in it) is made; so is the results folder's binding
    (``ldm_ext/evaluation/provenance.py``): a folder made by another checkpoint, method, config or
    code version stops the run before anything in it is written or re-scored."""
    from ldm_ext.evaluation.provenance import bind, check_binding, made_by, subjects_hash
    from ldm_ext.eval_config import load_eval_config, second_encoder_name

    overrides = list(args.overrides)
    if args.references:
        overrides.append(f"subjects.root={args.references}")
    if args.images and not any(o.startswith("name=") for o in overrides):
        overrides.append(f"name={Path(args.images).resolve().name}")
    cfg = load_eval_config(args.config, overrides)
    device = resolve_device(cfg.generation.device)
    out_dir = Path(cfg.output_dir) / cfg.name
    recipe = run_config(args.checkpoint) if args.checkpoint else None
    made = made_by(OmegaConf.to_container(cfg, resolve=True),
                   recipe.method.name if recipe else None, args.checkpoint, args.images)
    check_binding(out_dir, made)
    subjects = load_subjects(cfg.subjects, out_dir)
    made["subjects_hash"] = subjects_hash(subjects)
    if args.images:
        image_dir = Path(args.images)
        words = {sid: s["class_word"] for sid, s in subjects.items()}
        records = records_from_folder(image_dir, cfg, words)
        bind(out_dir, made)
    else:
        check_binding(out_dir, made)
        image_dir, records = out_dir / "images", plan(cfg, subjects)
    if not args.images:
        generate_bound(cfg, args.checkpoint, subjects, records, out_dir, made, device)
    cfg.scoring.second_encoder = second_encoder_name(cfg.scoring, cfg.method_encoder)
    rows, sims, skipped = score_folder(cfg, image_dir, records, subjects, device)
    summary = write_outputs(cfg, out_dir, image_dir, rows, sims, skipped, subjects,
                            provenance_record(cfg, made, device, recipe))
    unread = f", {len(skipped)} unreadable skipped (listed in report.md)" if skipped else ""
    print(f"wrote {out_dir} ({len(rows)} images{unread})")
    print("\n".join(overall_lines(summary["overall"], display_for(summary["config"]))))
    return out_dir


def run_config(checkpoint: str):
    """The training config behind ``--checkpoint`` (its run's, or the experiment YAML),
    read without loading weights or torch: the method's name and ``seed``."""
    from ldm_ext.config import load_config
    from ldm_ext.folders import RUN_CONFIG, run_folder

    if is_experiment(checkpoint):
        return load_config(checkpoint)
    return load_config(run_folder(checkpoint)[0] / RUN_CONFIG, literal=True)


def generate_bound(cfg, checkpoint: str, subjects: dict[str, dict], records: list[dict],
                   out_dir: Path, made: dict, device: str) -> None:
    """Fit what per-identity subjects need, load the method, bind the results folder to its
    weights (``made["weights_hash"]``: a rerun with other weights at the same path is
    refused) and generate what the folder lacks."""
    from ldm_ext.evaluation.provenance import bind
    from ldm_ext.registry import identity_encoder
    from ldm_ext.weights import weights_hash

    fitted = fit_subjects(cfg, checkpoint, subjects, out_dir)
    method = load_method(checkpoint)
    made["weights_hash"] = weights_hash(method.trainable_parameters())
    bind(out_dir, made)
    method = method.to(device)
    cfg.method_encoder = identity_encoder(method.cfg.method)  # recorded in summary.json
    generate(cfg, method, subjects, records, out_dir, fitted)


def provenance_record(cfg, made: dict, device: str, recipe) -> dict:
    """summary.json's ``provenance`` (``ldm_ext/evaluation/provenance.record``)."""
    from ldm_ext.evaluation.provenance import record
    from ldm_ext.evaluation.scoring import random_scorers

    return record(made, device, random_scorers(cfg.scoring), recipe.seed if recipe else None)


def evaluate(argv: list[str] | None) -> int:
    """``--compare`` finished results, or run (generate or take images, then score)."""
    args = parse_args(argv)
    if args.compare:
        from ldm_ext.evaluation.compare import compare

        print(f"wrote {compare(args.compare, args.out, args.wandb) / 'report.md'}")
    else:
        run(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 done; 2 a config, input or missing-weights mistake, told in one line."""
    return run_cli(evaluate, argv, prog="eval")


if __name__ == "__main__":
    sys.exit(main())
