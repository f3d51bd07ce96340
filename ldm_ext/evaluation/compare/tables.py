"""The comparison's Markdown tables: which run is which, runs x groups (prompt category or
N) per metric, the images all runs share, the mixing matrices' diagonal and leakage."""
from __future__ import annotations

import numpy as np

from ldm_ext.evaluation.compare.results import Result
from ldm_ext.evaluation.metric_names import Display

# metrics given a table and a plot per category and per N (all metrics are in "Overall")
HEADLINE = ("identity", "identity_second", "multi_sim", "clip_t", "clip_i", "face_sim", "id_p")


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
