"""The comparison's ``report.md``: runs, methods x metrics, identity by two encoders, the
papers' figures, coverage, per category and N, mixing, grids, glossary."""
from __future__ import annotations

from pathlib import Path

from ldm_ext.evaluation.compare.grids import grid_lines
from ldm_ext.evaluation.compare.plots import plot_groups, plot_mixing
from ldm_ext.evaluation.compare.results import Result
from ldm_ext.evaluation.compare.tables import (coverage_lines, headline, mixing_lines,
                                               pivot_table, runs_table)
from ldm_ext.evaluation.identity_check import compare_lines
from ldm_ext.evaluation.metric_names import glossary_lines, sources
from ldm_ext.evaluation.published import display_for, published_lines, tables_of
from ldm_ext.evaluation.report import markdown_table


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
