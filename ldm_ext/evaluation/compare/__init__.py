"""One report comparing finished evaluations (``eval.py --compare A B ...``).

Each input is a results folder as ``eval.py`` writes it (``evaluation/report.py``):
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

from pathlib import Path

from ldm_ext.evaluation.compare.report import write_compare_report
from ldm_ext.evaluation.compare.results import check_protocols, load_results


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
