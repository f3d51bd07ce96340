"""The wandb runs of ``eval.py`` (``wandb: true``) and of ``eval.py --compare --wandb``.

An evaluation's run lives in its results folder (``ldm_ext/tracking.py``: id kept in
``<results>/wandb_id``, files in ``<results>/wandb/``; job type ``eval``, grouped by
method): the eval config as run config; the summary metrics (``eval/<metric>`` mean, its
``_std``, and per prompt category and per number of subjects N); a ``wandb.Table`` with
one row per image (the image, its reference photos, prompt, N, every metric); the plots
and the labelled grids. A comparison's run (job type ``compare``) holds its methods x
metrics table, plots and grids.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ldm_ext.evaluation.grid_labels import framed
from ldm_ext.evaluation.scoring import METRICS
from ldm_ext.tracking import init_args, run_tags


def metric_values(summary: dict) -> dict[str, float]:
    """``eval/<metric>`` (mean) and ``eval/<metric>_std`` overall,
    ``eval/category/<c>/<metric>`` and ``eval/N<n>/<metric>`` (means) of a summary."""
    values = {}
    for metric, stats in summary["overall"].items():
        if stats["n"]:
            values[f"eval/{metric}"], values[f"eval/{metric}_std"] = stats["mean"], stats["std"]
    for key, prefix in (("by_category", "category/"), ("by_num_ids", "N")):
        for group, metrics in summary[key].items():
            values.update({f"eval/{prefix}{group}/{metric}": stats["mean"]
                           for metric, stats in metrics.items() if stats["n"]})
    return values


def reference_strip(ids: list[str], photos: dict[str, str], side: int = 96) -> Image.Image:
    """The photos of ``ids`` side by side, framed in their slot colours."""
    strip = Image.new("RGB", (side * len(ids), side), "white")
    for slot, sid in enumerate(ids):
        strip.paste(framed(Image.open(photos[sid]), side, slot), (slot * side, 0))
    return strip


def caption(row: dict, seed: int | None) -> str:
    """What one evaluation image is: prompt, N, subjects, the generation seed and image k
    of the prompt (``seed``: None when the images were not generated here)."""
    subjects = row["subjects"] if isinstance(row["subjects"], list) else \
        str(row["subjects"]).split("+")
    text = f"{row.get('clip_prompt', '')} | N={len(subjects)} | {'+'.join(subjects)}"
    seed = row.get("seed", seed)
    return text + (f" | seed {seed}" if seed is not None else "") + \
        (f" | k={row['k']}" if row.get("k") not in (None, "") else "")


def image_table(rows: list[dict], image_dir: Path, photos: dict[str, str],
                seed: int | None):
    """``wandb.Table``: one row per image with its reference photos, prompt, N, category
    and every metric (None where a metric does not apply)."""
    import wandb

    metrics = [m for m in METRICS if any(row.get(m) is not None for row in rows)]
    table = wandb.Table(columns=["image", "references", "subjects", "prompt", "N", "category",
                                 *metrics])
    strips: dict[tuple, object] = {}  # one reference image per subject group
    for row in rows:
        ids = tuple(row["subjects"])
        if ids not in strips and all(s in photos for s in ids):
            strips[ids] = wandb.Image(reference_strip(list(ids), photos),
                                      caption=" + ".join(ids))
        table.add_data(wandb.Image(str(image_dir / row["file"]), caption=caption(row, seed)),
                       strips.get(ids), "+".join(ids), row.get("clip_prompt", ""), len(ids),
                       str(row["category"]), *[row.get(m) for m in metrics])
    return table


def pictures(out_dir: Path, folder: str) -> dict:
    """``<folder>/<stem>`` -> ``wandb.Image`` of every PNG in ``out_dir/folder``."""
    import wandb

    return {f"{folder}/{p.stem}": wandb.Image(str(p), caption=p.stem)
            for p in sorted((out_dir / folder).glob("*.png"))}


def first_record(out_dir: Path) -> dict:
    """The first line of ``out_dir/manifest.jsonl`` (eval.py's generation records the
    method and its model family there), or {} without one."""
    manifest = out_dir / "manifest.jsonl"
    line = manifest.read_text().split("\n", 1)[0] if manifest.is_file() else ""
    try:
        return json.loads(line) if line.strip() else {}
    except json.JSONDecodeError:
        return {}


def made_by(out_dir: Path, image_dir: Path, summary: dict, seed: int) -> dict:
    """``method``, model ``family`` and generation ``seed`` of an evaluation's images, as
    far as its folder tells (the seed only when eval.py generated them, into
    ``out_dir/images``)."""
    first = first_record(out_dir)
    here = image_dir.resolve() == (out_dir / "images").resolve()
    return {"method": str(summary.get("method") or first.get("method") or ""),
            "family": first.get("family"), "seed": seed if here else None}


def log_eval(cfg, out_dir: Path, image_dir: Path, rows: list[dict], summary: dict,
             photos: dict[str, str]) -> str:
    """Log one evaluation to its wandb run (made or resumed); returns the run's id."""
    import wandb
    from omegaconf import OmegaConf

    made = made_by(out_dir, image_dir, summary, cfg.generation.seed)
    run = wandb.init(**init_args(
        out_dir, name=cfg.name, project=cfg.wandb_project, mode="auto",
        group=made["method"] or None, job_type="eval",
        tags=run_tags(made["method"], made["family"], cfg.prompts.set),
        config=OmegaConf.to_container(cfg, resolve=True)))
    run.log({"eval/images": image_table(rows, image_dir, photos, made["seed"]),
             **metric_values(summary), **pictures(out_dir, "plots"),
             **pictures(out_dir, "grids")})
    run.summary["num_images"] = summary["num_images"]
    run.finish()
    return run.id


def log_compare(out_dir: Path, results: list, project: str) -> str:
    """Log a comparison (``compare/results.py`` Results) to its wandb run: one table row
    per run (method, images, mean and std of each metric), the plots and grids."""
    import wandb

    metrics = [m for m in METRICS if any(r.summary["overall"].get(m, {}).get("n")
                                         for r in results)]
    columns = ["run", "method", "images"] + [f"{m}{s}" for m in metrics for s in ("", "_std")]
    table = wandb.Table(columns=columns)
    for r in results:
        stats = [r.summary["overall"].get(m) or {} for m in metrics]
        table.add_data(r.label, r.method, r.summary.get("num_images"),
                       *[v for s in stats for v in ((s.get("mean"), s.get("std"))
                                                    if s.get("n") else (None, None))])
    methods = [r.method for r in results]
    run = wandb.init(**init_args(
        out_dir, name=out_dir.name, project=project, mode="auto", group="compare",
        job_type="compare", tags=run_tags(*methods),
        config={"runs": {r.label: str(r.folder) for r in results}}))
    run.log({"compare/runs": table, **pictures(out_dir, "plots"), **pictures(out_dir, "grids")})
    run.finish()
    return run.id
