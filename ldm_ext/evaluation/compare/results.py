"""The results folders a comparison reads (``summary.json``, ``metrics.csv``, where the
images are, which method made them) and the check that they share one protocol."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ldm_ext.cli import UserError
from ldm_ext.evaluation.provenance import protocol

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
