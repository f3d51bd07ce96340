"""Generation for ``eval.py --checkpoint``: the method from its run (or, per-identity
methods, its recipe and the weights fitted to each subject), the subjects' identities, and
every planned image not yet in the results folder's manifest (resumable)."""
from __future__ import annotations

import json
from pathlib import Path

from ldm_ext.cli import InputError, open_image


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
    """Whether ``--checkpoint`` names an experiment YAML (per-identity methods: weights
    come from each subject's fit) rather than a run, export or weights file."""
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
