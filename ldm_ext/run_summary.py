"""Where a finished run put everything: the lines ``train.py`` and ``ldm_ext.fit`` print
last, read from the run folder itself (so they show what exists, not what should).

A wandb run that went offline (no ``WANDB_API_KEY``) is uploaded later with
``wandb sync``: the summary gives the command for every offline run in the folder that
has not been synced yet (wandb marks a synced run with ``run-<id>.wandb.synced``).
"""
from __future__ import annotations

from pathlib import Path


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def unsynced_offline_runs(run_dir: Path) -> list[Path]:
    """The offline wandb runs under ``<run_dir>/wandb`` not synced yet, oldest first."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    return [r for r in runs if r.is_dir() and not list(r.glob("*.wandb.synced"))]


def wandb_line(run_dir: Path) -> str | None:
    """``wandb sync ...`` for the runs still offline; else where the latest wandb run is
    (online, or offline and synced since); None without wandb."""
    offline = unsynced_offline_runs(run_dir)
    if len(offline) == 1:
        return f"wandb sync {offline[0]}"
    if offline:  # one folder per start of a resumed run
        return f"wandb sync {run_dir / 'wandb'}/offline-run-*   ({len(offline)} runs)"
    latest = run_dir / "wandb" / "latest-run"
    if not latest.exists():
        return None
    target = latest.resolve()
    return f"{'synced' if target.name.startswith('offline-') else 'online'} ({target})"


def csv_line(versions: list[Path]) -> str:
    """The newest CSV log of a run (one ``version_<n>/`` per start)."""
    if not versions:
        return "off (logger.csv=false)"
    newest = _newest(versions) / "metrics.csv"
    return f"{newest}" if newest.is_file() else \
        f"{newest.parent}/ (nothing logged: fewer steps than trainer.log_every)"


def run_summary(run_dir: str | Path, extra: dict[str, str] | None = None) -> list[str]:
    """One line per output of the run in ``run_dir`` that exists (a missing one says
    how to get it), then the ``extra`` label -> text lines."""
    from ldm_ext.methods.loading import RUN_CONFIG, TRAINABLE

    run = Path(run_dir)
    grids = sorted((run / "samples").glob("*.png"))
    versions = sorted((run / "csv").glob("version_*"))
    last = run / "checkpoints" / "last.ckpt"
    evaluation = run / "eval" / "eval.csv"
    rows = [
        ("run folder", f"{run}"),
        ("config", f"{run / RUN_CONFIG}"),
        ("last checkpoint", f"{last}" if last.exists() else "none yet"),
        ("trainable weights", f"{run / TRAINABLE}" if (run / TRAINABLE).is_file()
         else "none yet"),
        ("sample grids", f"{run / 'samples'}/ ({len(grids)}, last {grids[-1].name})" if grids
         else "none"),
        ("eval results", f"{evaluation} (+ identity_check.jsonl, attention overlays)"
         if evaluation.is_file() else "none (trainer.eval_every=K evaluates every K steps)"),
        ("metrics (CSV)", csv_line(versions)),
    ]
    wandb = wandb_line(run)
    rows.append(("wandb", wandb or "off (logger.wandb=false)"))
    rows += list((extra or {}).items())
    width = max(len(label) for label, _ in rows)
    return [f"  {label:<{width}}  {value}" for label, value in rows]


def print_summary(run_dir: str | Path, title: str, extra: dict[str, str] | None = None) -> None:
    """Print ``title:`` and the summary, once (rank 0 of a multi-process run)."""
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print("\n".join([f"{title}:", *run_summary(run_dir, extra)]), flush=True)
