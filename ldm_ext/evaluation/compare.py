"""One report comparing finished evaluations (``eval.py --compare A B ...``).

Each input is a results folder as ``eval.py`` writes it (report.py):
``summary.json``, ``metrics.csv`` and the images (``images/``, or the folder recorded in
``summary.json`` for ``--images`` runs). The report puts the runs side by side: methods x
metrics (mean ± std), per prompt category and per number of subjects N (tables and bar
plots), the identity-mixing matrices, and grids of the same subject and prompt in every
run. Images are matched by file name (``<ids>__p<index>__<k>.png``: the same plan gives
the same names whatever the method), so a grid column is one planned image; results made
under different protocols (prompt set, subjects, N plan, size, seed, scorers:
``provenance.protocol``) are refused, naming each differing field.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ldm_ext.evaluation.identity_check import compare_lines
from ldm_ext.evaluation.metric_names import Display, display_name, glossary_lines, sources
from ldm_ext.evaluation.published import display_for, published_lines, tables_of
from ldm_ext.evaluation.provenance import protocol
from ldm_ext.evaluation.report import markdown_table, pyplot, save_figure
from ldm_ext.cli import UserError

# metrics given a table and a plot per category and per N (all metrics are in "Overall")
HEADLINE = ("identity", "identity_second", "multi_sim", "clip_t", "clip_i", "face_sim", "id_p")
SUMMARY_KEYS = ("overall", "by_category", "by_num_ids", "mixing")


class NotAResult(UserError, ValueError):
    """A folder given to ``--compare`` is not an ``eval.py`` results folder."""


class ProtocolMismatch(UserError, ValueError):
    """Results given to ``--compare`` were made under different protocols."""


@dataclass
class Result:
    """One finished evaluation as the comparison needs it."""

    label: str  # unique name in the report (the folder name)
    folder: Path
    summary: dict  # summary.json
    rows: list[dict]  # metrics.csv rows (values as strings; subjects joined with '+')
    image_dir: Path | None  # None: the images are nowhere to be found
    method: str  # method name when the summary or manifest records it, else ""


def load_result(folder: Path, label: str) -> Result:
    """Read one results folder; a folder eval.py did not write raises NotAResult."""
    summary_path, csv_path = folder / "summary.json", folder / "metrics.csv"
    if not (summary_path.is_file() and csv_path.is_file()):
        raise NotAResult(f"{folder}: not an eval result folder (no summary.json and "
                         "metrics.csv as eval.py writes them)")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as err:
        raise NotAResult(f"{folder}: summary.json is not valid JSON ({err})") from None
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise NotAResult(f"{folder}: summary.json lacks {', '.join(missing)} (not eval.py's)")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    recorded = Path(summary["image_dir"]) if summary.get("image_dir") else None
    image_dir = folder / "images" if (folder / "images").is_dir() else recorded
    return Result(label, folder, summary, rows, image_dir, method_name(folder, summary))


def method_name(folder: Path, summary: dict) -> str:
    """``method`` from summary.json (its provenance), else from the first manifest record,
    else ""."""
    recorded = summary.get("method") or (summary.get("provenance") or {}).get("method")
    if recorded:
        return str(recorded)
    manifest = folder / "manifest.jsonl"
    first = manifest.read_text().split("\n", 1)[0] if manifest.is_file() else ""
    try:
        return str(json.loads(first).get("method") or "") if first.strip() else ""
    except json.JSONDecodeError:
        return ""


def run_labels(folders: list[Path]) -> list[str]:
    """Folder names; ``parent/name`` where names repeat; numbered if still equal."""
    names = [f.name for f in folders]
    labels = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name
              for f in folders]
    return [f"{x} #{i + 1}" if labels.count(x) > 1 else x for i, x in enumerate(labels)]


def load_results(folders: list[str | Path]) -> list[Result]:
    """Every folder as a Result (the first that is not one raises, naming it)."""
    paths = [Path(f).resolve() for f in folders]
    return [load_result(p, label) for p, label in zip(paths, run_labels(paths))]


def check_protocols(results: list[Result]) -> None:
    """Raise ProtocolMismatch naming every field (``provenance.protocol``: the
    plan of images, the subjects, the scorers) on which a result differs from the first:
    images are paired by file name, and ``p00`` is another prompt under another set. A
    field one result does not record (written before it was) is not compared."""
    def fields(r: Result) -> dict:
        subjects = (r.summary.get("provenance") or {}).get("subjects_hash")
        return protocol(r.summary.get("config") or {}, subjects)

    first, differ = fields(results[0]), []
    for r in results[1:]:
        own = fields(r)
        differ += [f"{key} {json.dumps(first[key])} ({results[0].label}) vs "
                   f"{json.dumps(own[key])} ({r.label})"
                   for key in first if key in own and first[key] != own[key]]
    if differ:
        raise ProtocolMismatch(f"--compare: the results were made under different protocols: "
                               f"{'; '.join(differ)}: compare results of one protocol")


def compare(folders: list[str | Path], out: str | Path | None = None,
            to_wandb: bool = False) -> Path:
    """Write the comparison of ``folders`` to ``out`` (default: ``compare_<labels>`` next
    to the first result) and return that folder; its report is ``report.md``. ``to_wandb``:
    also log its table, plots and grids to a wandb run (``eval_wandb.py``) in
    the first result's ``wandb_project``."""
    results = load_results(folders)
    check_protocols(results)
    if out is None:
        safe = "_".join(r.label.replace("/", "-").replace(" #", "-") for r in results)
        out = results[0].folder.parent / f"compare_{safe}"
    out_dir = Path(out)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    (out_dir / "grids").mkdir(exist_ok=True)
    write_compare_report(out_dir, results)
    if to_wandb:
        from ldm_ext.evaluation.eval_wandb import log_compare

        project = results[0].summary.get("config", {}).get("wandb_project") or "idforge-eval"
        log_compare(out_dir, results, project)
    return out_dir


# ----- tables -------------------------------------------------------------------------
def runs_table(results: list[Result]) -> list[str]:
    """Which run is which: label, method, image count, folder."""
    lines = ["| run | method | images | folder |", "|---|---|---|---|"]
    return lines + [f"| {r.label} | {r.method or '–'} | {r.summary.get('num_images', '–')} | "
                    f"`{r.folder}` |" for r in results]


def headline(results: list[Result]) -> list[str]:
    """The HEADLINE metrics some run has."""
    return [m for m in HEADLINE if any(m in r.summary["overall"] for r in results)]


def group_names(results: list[Result], key: str) -> list[str]:
    """Groups of ``key`` (by_category: in protocol order; by_num_ids: N ascending)."""
    groups = list(dict.fromkeys(g for r in results for g in r.summary[key]))
    return sorted(groups, key=int) if key == "by_num_ids" else groups


def pivot_table(results: list[Result], key: str, metric: str, label: str,
                display: Display | None = None) -> list[str]:
    """Runs x groups (``key``: by_category or by_num_ids) table of one metric."""
    display = display or Display()
    groups = group_names(results, key)
    lines = [f"| {display.name(metric)} \\ {label} | " + " | ".join(groups) + " |",
             "|---" * (len(groups) + 1) + "|"]
    for r in results:
        cells = " | ".join(display.cell(metric, r.summary[key].get(g, {}).get(metric))
                           for g in groups)
        lines.append(f"| {r.label} | {cells} |")
    return lines


def coverage_lines(results: list[Result]) -> list[str]:
    """How many images all runs share; runs with others (their means include those)."""
    files = {r.label: {row["file"] for row in r.rows} for r in results}
    common = set.intersection(*files.values())
    lines = [f"{len(common)} images are in every run."]
    for label, own in files.items():
        if own - common:
            lines.append(f"- {label}: {len(own - common)} images not in every run "
                         "(its means include them).")
    return lines


def mixing_lines(results: list[Result], n: str) -> list[str]:
    """Mean diagonal (identity kept) and off-diagonal (leakage) of each run's N=n matrix."""
    lines = ["| run | diagonal | off-diagonal |", "|---|---|---|"]
    for r in results:
        matrix = r.summary["mixing"].get(n)
        if matrix is None:
            lines.append(f"| {r.label} | – | – |")
            continue
        m = np.array(matrix, dtype=float)
        off = m[~np.eye(len(m), dtype=bool)]
        lines.append(f"| {r.label} | {_nan_mean(np.diag(m))} | {_nan_mean(off)} |")
    return lines


def _nan_mean(values: np.ndarray) -> str:
    """Mean of the defined entries (a never-matched slot's row is NaN), "–" if none."""
    values = values[~np.isnan(values)]
    return f"{values.mean():.3f}" if values.size else "–"


# ----- plots --------------------------------------------------------------------------
def plot_groups(out_dir: Path, results: list[Result], key: str, label: str) -> Path:
    """Bars per group (category or N), the runs side by side, one panel per metric."""
    plt = pyplot()
    metrics, groups = headline(results), group_names(results, key)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 3.2),
                             squeeze=False)
    width = 0.8 / len(results)
    for ax, metric in zip(axes[0], metrics):
        for j, r in enumerate(results):
            stats = [r.summary[key].get(g, {}).get(metric) or {} for g in groups]
            means = [s.get("mean") if s.get("n") else np.nan for s in stats]
            stds = [s.get("std") if s.get("n") else np.nan for s in stats]
            ax.bar(np.arange(len(groups)) + j * width, means, width, yerr=stds, label=r.label)
        ax.set_xticks(np.arange(len(groups)) + width * (len(results) - 1) / 2, groups)
        ax.set(title=display_name(metric), xlabel=label)
    axes[0][0].legend(fontsize="small")
    return save_figure(fig, out_dir / "plots" / f"{key}.png")


def plot_mixing(out_dir: Path, results: list[Result], n: str) -> Path:
    """The runs' N=n identity-mixing matrices side by side, one colour scale."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results) + 1, 3),
                             squeeze=False)
    shown = None
    for ax, r in zip(axes[0], results):
        matrix = r.summary["mixing"].get(n)
        ax.set(title=r.label, xlabel="reference slot", ylabel="matched face")
        if matrix is None:
            ax.text(0.5, 0.5, f"no N={n} images", ha="center", va="center")
            continue
        shown = ax.imshow(np.array(matrix, dtype=float), vmin=-1, vmax=1, cmap="coolwarm")
    if shown is not None:
        fig.colorbar(shown, ax=axes[0][-1])  # one scale: -1..1 in every panel
    return save_figure(fig, out_dir / "plots" / f"mixing_n{n}.png")


# ----- grids: one subject group and prompt, a row per run -----------------------------
def grid_keys(results: list[Result], limit: int = 8) -> dict[tuple[str, str], list[dict]]:
    """The rows (of any run) of the first (subjects, prompt index) of each (N, category),
    preferring images every run has."""
    common = set.intersection(*({row["file"] for row in r.rows} for r in results))
    keys: dict[tuple[str, str], list[dict]] = {}
    seen = set()
    for row in sorted((row for r in results for row in r.rows),
                      key=lambda row: row["file"] not in common):
        key, group = (row["subjects"], row["prompt_index"]), (
            row["subjects"].count("+"), row["category"])
        if group not in seen and len(keys) < limit:
            seen.add(group)
            keys[key] = []
        if key in keys:
            keys[key].append(row)
    return keys


def _blank(thumb: int) -> Image.Image:
    """The tile of an image a run lacks."""
    tile = Image.new("RGB", (thumb, thumb), (225, 225, 225))
    ImageDraw.Draw(tile).text((8, thumb // 2 - 6), "missing", fill=(120, 0, 0))
    return tile


def write_grid(out_dir: Path, results: list[Result], key: tuple[str, str],
               files: list[str], thumb: int = 128) -> tuple[Path, list[str]]:
    """Labelled grid of ``files`` (columns) in every run (rows, labelled with run and
    method), the prompt, N and seed on top and the subjects' reference photos under it;
    a missing image is a blank tile. Returns the grid's path and ``run: file`` of each
    missing image."""
    from ldm_ext.evaluation.grid_labels import save_grid

    tiles, missing = [], []
    for r in results:
        for name in files:
            path = r.image_dir / name if r.image_dir else None
            if path is not None and path.is_file():
                tiles.append(Image.open(path).convert("RGB").resize((thumb, thumb)))
            else:
                missing.append(f"{r.label}: `{name}`")
                tiles.append(_blank(thumb))
    path = out_dir / "grids" / f"{key[0]}__p{int(key[1]):02d}.png"
    save_grid(grid_labels(results, key, files).render(tiles, len(files)), path)
    return path, missing


def grid_labels(results: list[Result], key: tuple[str, str], files: list[str]):
    """Title (prompt, N, seed when all runs share it), column labels (image k), row
    labels (run (method)) and the subjects' reference photos (summary.json
    ``references``) of a comparison grid."""
    from ldm_ext.evaluation.grid_labels import GridLabels

    subjects, rows = key[0].split("+"), [row for r in results for row in r.rows]
    prompt = next((row.get("clip_prompt", "") for row in rows
                   if (row["subjects"], row["prompt_index"]) == key), "")
    seeds = {r.summary.get("config", {}).get("generation", {}).get("seed") for r in results}
    seed = f" · seed {seeds.pop()}" if len(seeds) == 1 and None not in seeds else ""
    ks = {row["file"]: row.get("k") for row in rows}
    photos = next((r.summary["references"] for r in results
                   if all(s in r.summary.get("references", {}) for s in subjects)), {})
    return GridLabels(
        f"{prompt} · N={len(subjects)}{seed}",
        [f"k={ks[name]}" if ks.get(name) not in (None, "") else name for name in files],
        [f"{r.label} ({r.method})" if r.method else r.label for r in results],
        [(s, Image.open(photos[s])) for s in subjects if s in photos])


def grid_lines(out_dir: Path, results: list[Result]) -> list[str]:
    """Report section: each grid, its prompt and the images it lacks."""
    order = ", ".join(r.label for r in results)
    lines = ["## Same subjects and prompt in every run", "",
             f"Rows top to bottom: {order}; columns: the images of the prompt, matched by "
             "file name. A grey tile is an image that run lacks.", ""]
    for key, rows in grid_keys(results).items():
        files = sorted({row["file"] for row in rows})
        path, missing = write_grid(out_dir, results, key, files)
        lines += [f"### {key[0]}, prompt {key[1]}: {rows[0].get('clip_prompt', '')}", "",
                  f"![{path.stem}]({path.relative_to(out_dir)})", ""]
        lines += [f"- missing: {m}" for m in missing] + ([""] if missing else [])
    return lines


# ----- report.md ----------------------------------------------------------------------
def mixing_section(out_dir: Path, results: list[Result]) -> list[str]:
    """Per N: the runs' mixing matrices side by side and their diagonal / off-diagonal."""
    lines = []
    for n in sorted({n for r in results for n in r.summary["mixing"]}, key=int):
        path = plot_mixing(out_dir, results, n)
        lines += [f"## Identity mixing, N = {n}", "",
                  "Entry (i, j): cosine of the face matched to reference i with reference j; "
                  "a high off-diagonal means identities leak into each other.", "",
                  *mixing_lines(results, n), "", f"![{path.stem}]({path.relative_to(out_dir)})",
                  ""]
    return lines


def write_compare_report(out_dir: Path, results: list[Result]) -> Path:
    """report.md: runs, methods x metrics, identity by two encoders (with a warning where a
    lead on the protocol encoder does not hold on the second), coverage, per category and
    N, mixing, grids."""
    overall = {f"{r.label} ({r.method})" if r.method else r.label: r.summary["overall"]
               for r in results}
    config = results[0].summary.get("config", {})  # one protocol (the first run's)
    display = display_for(config)
    lines = [f"# Comparison: {' vs '.join(r.label for r in results)}", "",
             "Mean ± population std (numpy `std`) over each run's images.", "",
             "## Runs", *runs_table(results), "",
             "## Methods × metrics", *markdown_table(overall, "run", display), "",
             *compare_lines([(r.label, r.summary["overall"], r.summary.get("identity_check")
                              or {}) for r in results]),
             *published_lines(tables_of(config), [(r.label, r.summary) for r in results],
                              display),
             "## Coverage", *coverage_lines(results), ""]
    for key, label, title in (("by_category", "category", "prompt category"),
                              ("by_num_ids", "N", "number of subjects")):
        lines += [f"## By {title}", ""]
        for metric in headline(results):
            lines += [*pivot_table(results, key, metric, label, display), ""]
        if headline(results):
            path = plot_groups(out_dir, results, key, label)
            lines += [f"![{path.stem}]({path.relative_to(out_dir)})", ""]
    lines += mixing_section(out_dir, results) + grid_lines(out_dir, results)
    metrics = list(dict.fromkeys(m for r in results for m in r.summary["overall"]))
    encoders = (results[0].summary.get("identity_check") or {}).get("encoders")
    lines += glossary_lines(metrics, display, sources(config, encoders))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
