"""Identity by two encoders: do they agree, and does a method's lead hold on both?

A method trained against the scoring network (a face encoder it conditions on, or whose
features its loss optimises) can raise that network's score without raising likeness.
Every report therefore scores identity twice: by the protocol's encoder (``identity``)
and by a second, independent one (``identity_second``, ``eval_config.second_encoder_name``),
and this module turns the two columns into what a reader needs:

* per run: both means, their Spearman rank correlation over images, and which encoder
  (if any) is the method's own network (``MethodConfig.identity_encoder``);
* per pair of runs (``--compare``): a warning when one run's advantage on the protocol
  encoder does not hold on the second one.

The encoders' cosines live on different scales (dlib's sit near 1), so only orderings and
standardised differences are compared across encoders, never raw values.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from ldm_ext.evaluation.metric_names import display_name
from ldm_ext.eval_config import encoder_family

# an advantage is a standardised mean difference (Cohen's d) of at least this: "small"
ADVANTAGE_MIN_EFFECT = 0.1


def _value(value) -> float | None:
    """A metric as a float; None for a missing or empty cell (CSV rows hold strings)."""
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def rank_correlation(rows: Sequence[dict]) -> tuple[float, int]:
    """(Spearman rho of ``identity`` vs ``identity_second`` over the images that have both,
    that number of images); rho is NaN with fewer than 3 images or a constant column."""
    from scipy.stats import spearmanr

    pairs = [(_value(r.get("identity")), _value(r.get("identity_second"))) for r in rows]
    pairs = [p for p in pairs if None not in p]
    if len(pairs) < 3 or any(len(set(column)) < 2 for column in zip(*pairs)):
        return float("nan"), len(pairs)
    return float(spearmanr(*zip(*pairs)).statistic), len(pairs)


def identity_check(rows: Sequence[dict], encoders: dict[str, str | None],
                   min_rank_corr: float) -> dict:
    """The summary's ``identity_check``: ``encoders`` (``protocol``, ``second``,
    ``method``), the rank correlation ``rank_corr`` over ``n`` images, and ``warnings``
    (``flagged`` when there is one): the two encoders agree weakly, the second is the
    protocol's network family, or a scorer is the method's own network family."""
    rho, count = rank_correlation(rows)
    warnings = []
    if encoders.get("second") and rho == rho and rho < min_rank_corr:
        warnings.append(f"the two encoders agree weakly on which images keep the identity "
                        f"(Spearman rho {rho:.2f} < {min_rank_corr:g} over {count} images): "
                        "the protocol score may follow its network rather than likeness")
    second = encoder_family(encoders.get("second"))
    if second and second == encoder_family(encoders.get("protocol")):
        warnings.append(f"the second scorer ({encoders['second']}) is of the protocol's "
                        f"network family ({encoders['protocol']}): not an independent check")
    method = encoder_family(encoders.get("method"))
    for role in ("protocol", "second"):
        if method and encoder_family(encoders.get(role)) == method:
            warnings.append(f"the {role} scorer ({encoders[role]}) is of the network family "
                            f"the method conditions on or optimises ({encoders['method']}): "
                            "its score can rise without likeness; read the other encoder")
    return {"encoders": dict(encoders), "rank_corr": rho, "n": count,
            "flagged": bool(warnings), "warnings": warnings}


def _cell(stats: dict | None) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}" if stats and stats.get("n") else "–"


def _rho(check: dict) -> str:
    rho = check.get("rank_corr")
    return "–" if rho is None or rho != rho else f"{rho:.2f}"


def report_lines(check: dict | None, overall: dict) -> list[str]:
    """report.md section: both encoders' identity, the method's encoder, rho, warnings."""
    if not check:
        return []
    encoders = check["encoders"]
    method = encoders.get("method") or "unknown"
    lines = ["## Identity by two encoders", "",
             f"The method's own face encoder (conditioning or loss): `{method}`.", "",
             f"| encoder | role | {display_name('identity')} | the method's network? |",
             "|---|---|---|---|"]
    for role, metric in (("protocol", "identity"), ("second", "identity_second")):
        name = encoders.get(role)
        same = bool(name) and encoder_family(name) == encoder_family(encoders.get("method"))
        lines.append(f"| `{name or 'off'}` | {role} | {_cell(overall.get(metric))} | "
                     f"{'**yes**' if same else 'no'} |")
    rho = _rho(check) if _rho(check) != "–" else ("undefined (fewer than 3 images, or one "
                                                  "encoder's scores constant: no face found)")
    lines += ["", f"Spearman rank correlation of the two per-image scores: {rho} over "
              f"{check['n']} images. The encoders' cosines have different scales: compare a "
              "column across runs, not the two columns.", ""]
    if not check["warnings"]:
        return lines + ["No warning (none of the checks above fired).", ""]
    return lines + [f"> **Warning:** {w}" for w in check["warnings"]] + [""]


def effect(a: dict | None, b: dict | None) -> float:
    """Standardised mean difference (a - b) / pooled std of two summary entries; NaN when
    either is missing."""
    if not (a and b and a.get("n") and b.get("n")):
        return float("nan")
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    diff = a["mean"] - b["mean"]
    return diff / pooled if pooled > 0 else math.copysign(math.inf, diff) if diff else 0.0


def advantage_warnings(runs: Sequence[tuple[str, dict, dict]]) -> list[str]:
    """One line per ordered pair (A, B) of ``(label, overall, identity_check)`` runs where A
    leads B on the protocol encoder (effect >= ADVANTAGE_MIN_EFFECT) but not on the second
    (effect <= 0). Runs whose second encoders differ are not compared (told once)."""
    seconds = {check.get("encoders", {}).get("second") for _, _, check in runs}
    if len(seconds) > 1:
        names = ", ".join(sorted(map(str, seconds)))
        return [f"the runs scored identity_second with different encoders ({names}): "
                "their second scores are not compared"]
    lines = []
    for (label_a, a, _), (label_b, b, _) in itertools.permutations(runs, 2):
        lead, second = effect(a.get("identity"), b.get("identity")), effect(
            a.get("identity_second"), b.get("identity_second"))
        if lead >= ADVANTAGE_MIN_EFFECT and second <= 0:
            lines.append(f"{label_a} leads {label_b} on the protocol encoder (effect "
                         f"{lead:+.2f}) but not on the second ({second:+.2f}): the lead may "
                         "come from fitting the scoring network, not from likeness")
    return lines


def compare_lines(runs: Sequence[tuple[str, dict, dict]]) -> list[str]:
    """``--compare`` section: per run the method's encoder, both identities and rho, then
    the advantage warnings. ``runs``: ``(label, overall, identity_check or {})``."""
    lines = ["## Identity by two encoders", "",
             f"| run | method's encoder | protocol encoder | {display_name('identity')} | second "
             f"encoder | {display_name('identity_second')} | rank corr |",
             "|---|---|---|---|---|---|---|"]
    for label, overall, check in runs:
        enc = check.get("encoders", {})
        lines.append(f"| {label} | `{enc.get('method') or 'unknown'}` | "
                     f"`{enc.get('protocol', '–')}` | {_cell(overall.get('identity'))} | "
                     f"`{enc.get('second') or 'off'}` | "
                     f"{_cell(overall.get('identity_second'))} | {_rho(check)} |")
    warnings = advantage_warnings(runs)
    warnings += [f"{label}: {w}" for label, _, check in runs for w in check.get("warnings", [])]
    lines += [""] + [f"> **Warning:** {w}" for w in warnings]
    return lines + ([""] if warnings else []) + \
        ["Effects are standardised mean differences (Cohen's d), comparable across encoders.",
         ""]


def identity_pairs(rows: Sequence[dict]) -> np.ndarray:
    """(I, 2) per-image (identity, identity_second) of the images with both (for plots)."""
    pairs = [(_value(r.get("identity")), _value(r.get("identity_second"))) for r in rows]
    return np.array([p for p in pairs if None not in p], dtype=float).reshape(-1, 2)
