"""How reports name metrics: the papers' names, their unit, one glossary line each.

``metrics.csv`` and ``summary.json`` keep the machine names of ``scoring.py``
(``identity``, ``clip_t``, ...): they are data, read back by ``--compare`` and by scripts.
Every table a reader sees (``report.md``, the ``--compare`` report, plots) names a metric
as the papers print it and shows it in percent where the paper it is compared with does
(StoryMaker's Table 1: Face Sim., CLIP-T and CLIP-I in %; the published tables say which,
``configs/published.yaml``). The glossary at the end of a report says, per metric shown,
what it measures, with which network of this run, and its range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# machine name -> (name as the papers print it, what it measures, (low, high) range);
# {protocol}, {second}, {detector}, {face_sim}, {clip_t}, {clip_i}, {matching},
# {threshold} are filled from the run's scoring config (``sources``)
GLOSSARY: dict[str, tuple[str, str, tuple[float | None, float | None]]] = {
    "faces": ("Faces", "faces the protocol's detector ({detector}) finds in an image (ours)",
              (0, None)),
    "detect": ("Detect", "SeFi-IDE's detection rate: share of images in which {detector} "
                         "finds at least as many faces as the image has subjects", (0, 1)),
    "identity": ("Identity Preservation",
                 "FastComposer's identity score (InstantFamily's Identity Preservation, "
                 "PortraitBooth's Id Pres.): cosine of the largest generated face and the "
                 "reference by {protocol}, clipped at 0; with N subjects the N largest faces "
                 "are matched greedily and the lowest matched score counts; too few faces "
                 "score 0", (0, 1)),
    "identity_second": ("Identity Preservation (2nd encoder)",
                        "the same score by an independent encoder with its own detector and "
                        "alignment, {second}; on that encoder's own scale: compare it across "
                        "runs, never with the protocol encoder's column", (0, 1)),
    "single_sim": ("SingleSim", "InstantFamily Eq. 10: cosine of the largest generated face and "
                                "the reference by {protocol}, not clipped (one subject; 0 "
                                "without a face)", (-1, 1)),
    "multi_sim": ("MultiSim", "InstantFamily Eq. 11: mean cosine of the generated faces matched "
                              "({matching}) to their references + (1 - mean cosine between the "
                              "generated faces), by {protocol}; too few faces score 0 (the "
                              "paper's maximum, 2, assumes faces are never anti-correlated)",
                  (-1, 3)),
    "matched_identity": ("Matched ID", "mean cosine of the generated faces matched ({matching}) "
                                       "to their references by {protocol} (ours; too few "
                                       "faces score 0)", (-1, 1)),
    "clip_t": ("CLIP-T", "CLIP text score (InstantFamily's Text Consistency, PortraitBooth's "
                         "CLIP-TI, SeFi-IDE's Prompt): cosine of the image and the prompt "
                         "without identity marker, CLIP {clip_t}", (-1, 1)),
    "id_p": ("ID (P)", "SeFi-IDE: Identity Preservation, counted 0 for an image whose CLIP-T "
                       "is below {threshold}", (0, 1)),
    "face_sim": ("Face Sim.", "StoryMaker: cosine of the largest generated face and the "
                              "reference by {face_sim} (buffalo_l in the paper); 0 without a "
                              "face", (-1, 1)),
    "clip_i": ("CLIP-I", "cosine of the CLIP {clip_i} image embeddings of the generated image "
                         "and the reference photo (mean of the references for N > 1)", (-1, 1)),
    "expression": ("Expression Coefficient", "PortraitBooth Table 4: cosine of the image and "
                                             "its emotion word alone, CLIP {clip_t}", (-1, 1)),
}


def display_name(metric: str) -> str:
    """The name the papers print for ``metric`` (unknown metrics keep their own name)."""
    return GLOSSARY[metric][0] if metric in GLOSSARY else metric


@dataclass(frozen=True)
class Display:
    """How one report shows metrics: the papers' names, and ``percent`` (machine names)
    scaled by 100 with "(%)" in the header, as the papers compared with print them."""

    percent: frozenset[str] = field(default_factory=frozenset)

    def name(self, metric: str) -> str:
        """Column header: the paper's name, "(%)" when shown in percent."""
        return display_name(metric) + (" (%)" if metric in self.percent else "")

    def scale(self, metric: str) -> float:
        return 100.0 if metric in self.percent else 1.0

    def cell(self, metric: str, stats: dict | None) -> str:
        """``mean ± std`` in the metric's unit (3 decimals, 2 in percent); "–" when the
        summary entry is absent or empty."""
        if not stats or not stats.get("n"):
            return "–"
        digits, scale = (2, 100.0) if metric in self.percent else (3, 1.0)
        return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def overall_lines(overall: dict[str, dict], display: Display) -> list[str]:
    """The overall means as a short console table: one ``name  mean ± std`` line each."""
    width = max((len(display.name(m)) for m in overall), default=0)
    return [f"  {display.name(m):<{width}}  {display.cell(m, stats)}"
            for m, stats in overall.items()]


def sources(config: dict, encoders: dict | None = None) -> dict[str, Any]:
    """The networks and settings behind each metric of a run, from its eval config (as
    recorded in ``summary.json``) and its ``identity_check`` encoders."""
    scoring = config.get("scoring", {})
    encoders = encoders or {}

    def named(model, weights) -> str:
        return f"`{model}` ({weights})" if model else "(off)"

    face_sim = scoring.get("face_sim_encoder")
    return {"protocol": f"`{encoders.get('protocol') or scoring.get('face_encoder')}`",
            "second": f"`{encoders['second']}`" if encoders.get("second") else "(off)",
            "detector": f"`{scoring.get('detector', 'mtcnn')}`",
            "face_sim": (f"`{scoring.get('face_sim_detector')}+{face_sim}"
                         + (f"/{scoring['face_sim_weights']}`" if scoring.get(
                             "face_sim_weights") else "`")) if face_sim else "(off)",
            "clip_t": named(scoring.get("clip_t_model"), scoring.get("clip_t_pretrained")),
            "clip_i": named(scoring.get("clip_i_model"), scoring.get("clip_i_pretrained")),
            "matching": scoring.get("matching", "hungarian"),
            "threshold": scoring.get("id_p_threshold", 0.23)}


def _range(bounds: tuple[float | None, float | None], scale: float) -> str:
    low, high = (None if b is None else b * scale for b in bounds)
    text = f"{low:g} to {high:g}" if high is not None else f"{low:g} or more"
    return text.replace("-", "−") + (" %" if scale != 1 else "")


def glossary_lines(metrics: list[str], display: Display, filled: dict[str, Any]) -> list[str]:
    """report.md's closing section: one line per metric shown (name, what it measures with
    which network, range in the unit shown)."""
    lines = ["## Glossary", ""]
    for metric in metrics:
        if metric not in GLOSSARY:
            continue
        name, text, bounds = GLOSSARY[metric]
        unit = " Shown in percent, as the paper compared with prints it." \
            if metric in display.percent else ""
        lines.append(f"- **{name}** (`{metric}` in metrics.csv): {text.format(**filled)}; "
                     f"range {_range(bounds, display.scale(metric))}.{unit}")
    return lines + [""]
