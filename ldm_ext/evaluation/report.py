"""Write an evaluation's results: per-image CSV, summary JSON, Markdown report with tables,
image grids and plots, and a wandb table (used by eval.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ldm_ext.evaluation.metric_names import Display, display_name, glossary_lines, sources


def write_csv(path: Path, rows: list[dict]) -> None:
    """Per-image metrics (list fields joined with '+')."""
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "+".join(v) if isinstance(v, list) else v
                             for k, v in row.items()})


def mixing_by_n(rows: list[dict], sims: list[np.ndarray], matching: str) -> dict[str, list]:
    """Identity-mixing matrix (slot x slot) per number of subjects N >= 2."""
    from ldm_ext.evaluation.metrics import mixing_matrix

    by_n: dict[int, list[np.ndarray]] = {}
    for row, sim in zip(rows, sims):
        if len(row["subjects"]) > 1:
            by_n.setdefault(len(row["subjects"]), []).append(sim)
    return {str(n): mixing_matrix(group, matching).tolist() for n, group in by_n.items()}


def write_outputs(cfg, out_dir: Path, image_dir: Path, rows: list[dict],
                  sims: list[np.ndarray], skipped: list[dict] | None = None,
                  subjects: dict[str, dict] | None = None,
                  provenance: dict | None = None) -> dict:
    """metrics.csv, summary.json, report.md (+ grids/, plots/) and the wandb run.

    ``skipped``: ``{"file", "reason"}`` of images that could not be read (not scored),
    listed in summary.json and report.md. ``subjects``: ``load_subjects``' subjects, whose
    photos summary.json records (``references``) and the grids and wandb table show.
    ``provenance``: what made the images and the scores (``provenance.record``),
    in summary.json and at the end of report.md."""
    from omegaconf import OmegaConf

    from ldm_ext.evaluation.identity_check import identity_check
    from ldm_ext.evaluation.scoring import summarize
    from ldm_ext.eval_config import scorer_names

    write_csv(out_dir / "metrics.csv", rows)
    encoders = {**scorer_names(cfg.scoring), "method": cfg.method_encoder or "unknown"}
    summary = {"name": cfg.name, **summarize(rows),
               "identity_check": identity_check(rows, encoders, cfg.scoring.min_rank_corr),
               "mixing": mixing_by_n(rows, sims, cfg.scoring.matching),
               "skipped": list(skipped or []),
               "image_dir": str(image_dir.resolve()),  # --compare finds --images runs' images
               "references": {sid: str(Path(s["photo"]).resolve())
                              for sid, s in (subjects or {}).items()},
               "config": OmegaConf.to_container(cfg, resolve=True),
               "provenance": provenance}
    (out_dir / "summary.json").write_text(json.dumps(_finite(summary), indent=2))
    write_report(out_dir, image_dir, rows, summary, cfg.note)
    if cfg.wandb:
        from ldm_ext.evaluation.eval_wandb import log_eval

        log_eval(cfg, out_dir, image_dir, rows, summary, summary["references"])
    return summary


def _finite(value):
    """NaN (metric undefined, e.g. a reference never matched) -> None, for strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ----- report.md: tables, grids, plots --------------------------------------------------
def stats_cell(stats: dict | None) -> str:
    """``mean ± std`` of one summary entry, 3 decimals; "–" when it has no value (or is
    absent)."""
    return Display().cell("", stats)


def markdown_table(groups: dict[str, dict], label: str,
                   display: Display | None = None) -> list[str]:
    """Markdown table: one row per group, one column per metric (mean ± std), headed by
    the papers' metric names (``display``: which ones in percent)."""
    display = display or Display()
    metrics = list(dict.fromkeys(m for stats in groups.values() for m in stats))
    lines = [f"| {label} | n | " + " | ".join(display.name(m) for m in metrics) + " |",
             "|---" * (len(metrics) + 2) + "|"]
    for group, stats in groups.items():
        count = max((s["n"] for s in stats.values()), default=0)
        cells = " | ".join(display.cell(m, stats.get(m)) for m in metrics)
        lines.append(f"| {group} | {count} | {cells} |")
    return lines


def write_grids(out_dir: Path, image_dir: Path, rows: list[dict], summary: dict | None = None,
                per_grid: int = 8, thumb: int = 160) -> list[Path]:
    """One labelled grid per prompt category: its first ``per_grid`` images, 4 per row,
    each with its reference photos and caption (prompt, N, subjects, seed, k) under it,
    the method and category on top."""
    from ldm_ext.evaluation.eval_wandb import caption, made_by
    from ldm_ext.evaluation.grid_labels import GridLabels, captioned, save_grid

    summary = summary or {}
    seed = summary.get("config", {}).get("generation", {}).get("seed")
    made = made_by(out_dir, image_dir, summary, seed)
    photos = {sid: Image.open(path) for sid, path in summary.get("references", {}).items()}
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(str(row["category"]), []).append(row)
    (out_dir / "grids").mkdir(exist_ok=True)
    paths = []
    for category, members in by_category.items():
        tiles = [captioned(Image.open(image_dir / r["file"]).convert("RGB").resize((thumb, thumb)),
                           caption(r, made["seed"]),
                           [(s, photos[s]) for s in r["subjects"] if s in photos])
                 for r in members[:per_grid]]
        seed = f"seed {made['seed']}" if made["seed"] is not None else ""
        title = " · ".join(x for x in (made["method"] or "images", f"category {category}",
                                       seed) if x)
        path = out_dir / "grids" / f"{category}.png"
        save_grid(GridLabels(title).render(tiles, min(4, len(tiles))), path)
        paths.append(path)
    return paths


def write_plots(out_dir: Path, rows: list[dict], summary: dict) -> list[Path]:
    """Identity vs CLIP-T and protocol vs second encoder scatters, per-category bars
    (mean ± std), mixing heatmaps."""
    from ldm_ext.evaluation.identity_check import identity_pairs

    plt = pyplot()
    (out_dir / "plots").mkdir(exist_ok=True)
    paths = []
    if any(r.get("clip_t") is not None for r in rows):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.scatter([r["clip_t"] for r in rows], [r["identity"] for r in rows], s=8)
        ax.set(xlabel=display_name("clip_t"), ylabel=display_name("identity"),
               title="per image")
        paths.append(save_figure(fig, out_dir / "plots" / "identity_vs_clip_t.png"))
    pairs = identity_pairs(rows)
    if len(pairs):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.scatter(pairs[:, 0], pairs[:, 1], s=8)
        ax.set(xlabel=display_name("identity"), ylabel=display_name("identity_second"),
               title="the two encoders, per image")
        paths.append(save_figure(fig, out_dir / "plots" / "identity_two_encoders.png"))
    groups = summary["by_category"]
    metrics = [m for m in ("identity", "clip_t") if m in summary["overall"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(1, len(metrics))
    for j, metric in enumerate(metrics):
        means = [groups[g][metric]["mean"] for g in groups]
        stds = [groups[g][metric]["std"] for g in groups]
        ax.bar(np.arange(len(groups)) + j * width, means, width, yerr=stds,
               label=display_name(metric))
    ax.set_xticks(np.arange(len(groups)) + width * (len(metrics) - 1) / 2, list(groups))
    ax.legend()
    ax.set_title("mean ± std per prompt category")
    paths.append(save_figure(fig, out_dir / "plots" / "by_category.png"))
    for n, matrix in summary["mixing"].items():
        fig, ax = plt.subplots(figsize=(3.5, 3))
        shown = ax.imshow(np.array(matrix, dtype=float), vmin=-1, vmax=1, cmap="coolwarm")
        ax.set(xlabel="reference slot", ylabel="matched generated face", title=f"mixing N={n}")
        fig.colorbar(shown)
        paths.append(save_figure(fig, out_dir / "plots" / f"mixing_n{n}.png"))
    return paths


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: Path, image_dir: Path, rows: list[dict], summary: dict,
                 note: str = "") -> Path:
    """report.md: overall table, identity by two encoders, the papers' figures beside this
    run's, per-category / per-N tables, mixing matrices, grids, plots, a glossary and the
    provenance; the metrics named as the papers print them, in percent where the paper
    compared with does (``summary["config"]``: the run's eval config)."""
    from ldm_ext.evaluation.identity_check import report_lines
    from ldm_ext.evaluation.provenance import report_lines as provenance_lines
    from ldm_ext.evaluation.published import display_for, published_lines, tables_of

    config = summary.get("config", {})
    display = display_for(config)
    lines = [f"# {summary['name']}", "", note, "",
             f"{summary['num_images']} images; mean ± population std (numpy `std`).", "",
             "## Overall", *markdown_table({"all": summary["overall"]}, "images", display), "",
             *report_lines(summary.get("identity_check"), summary["overall"]),
             *published_lines(tables_of(config), [("this run", summary)], display),
             "## By prompt category",
             *markdown_table(summary["by_category"], "category", display), "",
             "## By number of subjects", *markdown_table(summary["by_num_ids"], "N", display),
             "", *skipped_section(summary["skipped"])]
    for n, matrix in summary["mixing"].items():
        lines += [f"## Identity mixing, N = {n}",
                  "Row i: generated face matched to reference slot i; column j: its cosine "
                  "with reference j (off-diagonal = leakage).", ""]
        lines += ["| | " + " | ".join(f"ref {j}" for j in range(len(matrix))) + " |",
                  "|---" * (len(matrix) + 1) + "|"]
        lines += [f"| face {i} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
                  for i, row in enumerate(matrix)] + [""]
    lines += ["## Image grids", *[f"![{p.stem}]({p.relative_to(out_dir)})"
                                  for p in write_grids(out_dir, image_dir, rows, summary)], ""]
    lines += ["## Plots", *[f"![{p.stem}]({p.relative_to(out_dir)})"
                            for p in write_plots(out_dir, rows, summary)], ""]
    encoders = (summary.get("identity_check") or {}).get("encoders")
    lines += glossary_lines(list(summary["overall"]), display, sources(config, encoders))
    lines += provenance_lines(summary.get("provenance"))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def skipped_section(skipped: list[dict]) -> list[str]:
    """report.md lines listing the images that could not be read (none: no section)."""
    if not skipped:
        return []
    return [f"## Skipped images ({len(skipped)})",
            "Not scored, not in the means above: they could not be read.", "",
            *[f"- `{entry['file']}`: {entry['reason']}" for entry in skipped], ""]
