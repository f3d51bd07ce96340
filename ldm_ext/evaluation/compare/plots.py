"""The comparison's plots: bars per group with the runs side by side, and the runs'
identity-mixing matrices on one colour scale."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ldm_ext.evaluation.compare.results import Result
from ldm_ext.evaluation.compare.tables import group_names, headline
from ldm_ext.evaluation.metric_names import display_name
from ldm_ext.evaluation.report import pyplot, save_figure


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
