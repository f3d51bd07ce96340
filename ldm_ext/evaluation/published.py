"""The papers' figures beside a run's: the "Published figures" section of ``report.md``
and of the ``--compare`` report.

The figures live in ``configs/published.yaml`` (quoted as printed, with the table they
come from); an eval config names the tables of its protocol (``published:``). Each table
is shown as the paper prints it, in the paper's unit and digits, with one row per run
below it: the run's mean (± std where the paper prints one) of the same metrics, over the
same number of subjects when the table is for N = 2 only.
"""
from __future__ import annotations

import re
from typing import Sequence

from ldm_ext.evaluation.metric_names import Display

CELL = re.compile(r"^(-?\d+)(?:\.(\d+))?( ± )?")


def tables_of(config: dict) -> dict[str, dict]:
    """The published tables a run's recorded eval config names (``summary.json``'s
    ``config``); none for configs written before the tables had names."""
    from ldm_ext.eval_config import published_tables

    ids = config.get("published") or []
    return published_tables(ids) if isinstance(ids, list) else {}


def display_for(config: dict) -> Display:
    """The report's Display: percent for the metrics of the tables printed in percent."""
    tables = tables_of(config)
    return Display(frozenset(m for table in tables.values() if table.get("unit") == "percent"
                             for m in table["columns"]))


def _format(table: dict) -> tuple[int, bool]:
    """(decimals, whether the paper prints ± std) of a table's first numeric cell."""
    for row in table["rows"].values():
        for cell in row.values():
            match = CELL.match(str(cell))
            if match:
                return len(match.group(2) or ""), bool(match.group(3))
    return 3, False


def _ours(stats: dict | None, scale: float, digits: int, with_std: bool) -> str:
    if not stats or not stats.get("n"):
        return "–"
    mean = f"{stats['mean'] * scale:.{digits}f}"
    return f"{mean} ± {stats['std'] * scale:.{digits}f}" if with_std else mean


def table_lines(table: dict, runs: Sequence[tuple[str, dict]], display: Display) -> list[str]:
    """One published table and, per ``(label, summary)`` run, the run's row."""
    metrics = list(table["columns"])
    n = table.get("num_ids")
    scale = 100.0 if table.get("unit") == "percent" else 1.0
    digits, with_std = _format(table)
    lines = [f"### {table['source']}", ""]
    lines += [f"{table['note']}", ""] if table.get("note") else []
    lines += ["| | " + " | ".join(display.name(m) for m in metrics) + " |",
              "|---" * (len(metrics) + 1) + "|",
              "| *the paper's column* | " + " | ".join(f"*{table['columns'][m]}*"
                                                      for m in metrics) + " |"]
    lines += [f"| {name} | " + " | ".join(str(row.get(m, "–")) for m in metrics) + " |"
              for name, row in table["rows"].items()]
    for label, summary in runs:
        stats = summary["by_num_ids"].get(str(n), {}) if n else summary["overall"]
        suffix = f" (N = {n})" if n else ""
        lines.append(f"| **{label}{suffix}** | " + " | ".join(
            _ours(stats.get(m), scale, digits, with_std) for m in metrics) + " |")
    return lines + [""]


def published_lines(tables: dict[str, dict], runs: Sequence[tuple[str, dict]],
                    display: Display) -> list[str]:
    """The "Published figures" section (no tables: no section)."""
    if not tables:
        return []
    lines = ["## Published figures", "",
             "The papers' own figures, quoted as printed (`configs/published.yaml`), with "
             "this run's in the same unit below each table. Other weights, data and "
             "hardware made them: they are the target a reproduction aims at.", ""]
    for table in tables.values():
        lines += table_lines(table, runs, display)
    return lines
