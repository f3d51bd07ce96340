"""One evaluation run: generate (``--checkpoint``) or take a folder (``--images``), score,
write the results folder; the library function behind ``eval.py``."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ldm_ext.evaluation.folder_scoring import score_folder
from ldm_ext.evaluation.generation import fit_subjects, generate, is_experiment, load_method
from ldm_ext.evaluation.metric_names import overall_lines
from ldm_ext.evaluation.published import display_for
from ldm_ext.evaluation.report import write_outputs
from ldm_ext.evaluation.subjects import load_subjects, plan, records_from_folder


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


def run(config: str | None, overrides: list[str], checkpoint: str | None = None,
        images: str | None = None, references: str | None = None) -> Path:
    """Generate with ``checkpoint`` or take the folder ``images``, score, write outputs;
    returns the results folder (``<output_dir>/<name>``).

    Args:
        config: eval YAML (``configs/eval/*.yaml``; None: the defaults, ``--images`` only).
        overrides: ``key=value`` of the eval config.
        checkpoint: run or export folder, weights in a run, or (per-identity methods) an
            experiment YAML; exactly one of ``checkpoint`` and ``images``.
        images: a folder of images to score instead of generating.
        references: the subjects folder (overrides ``subjects.root``).

    The device, the checkpoint's folder and the names, prompt indices and subject ids of an
    ``images`` folder are checked before any model loads and before the results folder
    (or the demo subjects in it) is made; so is the results folder's binding
    (``provenance.py``): a folder made by another checkpoint, method, config or code
    version stops the run before anything in it is written or re-scored."""
    from ldm_ext.evaluation.provenance import bind, check_binding, made_by, subjects_hash
    from ldm_ext.eval_config import second_encoder_name

    cfg = eval_config(config, overrides, images, references)
    device = resolve_device(cfg.generation.device)
    out_dir = Path(cfg.output_dir) / cfg.name
    recipe = run_config(checkpoint) if checkpoint else None
    made = made_by(OmegaConf.to_container(cfg, resolve=True),
                   recipe.method.name if recipe else None, checkpoint, images)
    check_binding(out_dir, made)
    subjects = load_subjects(cfg.subjects, out_dir)
    made["subjects_hash"] = subjects_hash(subjects)
    if images:
        image_dir = Path(images)
        words = {sid: s["class_word"] for sid, s in subjects.items()}
        records = records_from_folder(image_dir, cfg, words)
        bind(out_dir, made)
    else:
        check_binding(out_dir, made)
        image_dir, records = out_dir / "images", plan(cfg, subjects)
        generate_bound(cfg, checkpoint, subjects, records, out_dir, made, device)
    cfg.scoring.second_encoder = second_encoder_name(cfg.scoring, cfg.method_encoder)
    rows, sims, skipped = score_folder(cfg, image_dir, records, subjects, device)
    summary = write_outputs(cfg, out_dir, image_dir, rows, sims, skipped, subjects,
                            provenance_record(cfg, made, device, recipe))
    unread = f", {len(skipped)} unreadable skipped (listed in report.md)" if skipped else ""
    print(f"wrote {out_dir} ({len(rows)} images{unread})")
    print("\n".join(overall_lines(summary["overall"], display_for(summary["config"]))))
    return out_dir


def eval_config(config: str | None, overrides: list[str], images: str | None,
                references: str | None):
    """The eval config of a run: ``config`` with ``overrides``, ``references`` as
    ``subjects.root`` and, for ``images`` without a ``name=``, the folder's name."""
    from ldm_ext.eval_config import load_eval_config

    overrides = list(overrides)
    if references:
        overrides.append(f"subjects.root={references}")
    if images and not any(o.startswith("name=") for o in overrides):
        overrides.append(f"name={Path(images).resolve().name}")
    return load_eval_config(config, overrides)


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
    """summary.json's ``provenance`` (``provenance.record``)."""
    from ldm_ext.evaluation.provenance import record
    from ldm_ext.evaluation.scoring import random_scorers

    return record(made, device, random_scorers(cfg.scoring), recipe.seed if recipe else None)
