"""Evaluation metrics as pure functions of embeddings and similarity matrices.

Every function takes numbers (numpy arrays or floats) and returns numbers, so each one is
unit-tested with hand-computed values; the networks that produce the embeddings live in
``scorers.py``. Conventions: a similarity matrix ``sim`` is (G, R): generated
faces (largest first, as the detectors return them) x reference identities; embeddings
are L2-normalised rows.

Metrics (docs/benchmark.md "Scoring", docs/methods.md):

* FastComposer identity score: single = ``max(cos, 0)`` of the largest face, 0 without a
  face; multi = greedy matching of the N largest faces, the minimum matched score,
  0 with fewer faces than subjects.
* InstantFamily SingleSim and MultiSim (Eq. 11); N > 2 as docs/methods.md §1 decides.
* Hungarian matching and the identity-mixing matrix (our additions).
* Face Sim (StoryMaker, ArcFace cosine), Detect rate and ID(P) (SeFi-IDE), CLIP-T,
  CLIP-I, PortraitBooth's expression coefficient.
* Summaries: mean and population standard deviation (``numpy.std``).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

Pairs = list[tuple[int, int]]


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, D) x (B, D) -> (A, B) cosine similarities (rows are normalised here)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(b)[-1])
    b = np.asarray(b, dtype=np.float64).reshape(-1, a.shape[-1])
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (B, D) arrays -> (B,): CLIP-T, CLIP-I, TextSim."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def single_sim(generated: np.ndarray, reference: np.ndarray) -> float:
    """InstantFamily SingleSim(A, A') = cos(E_f(A), E_f(A')) of two face embeddings."""
    return float(cosine_matrix(generated, reference)[0, 0])


def greedy_matching(sim: np.ndarray) -> Pairs:
    """FastComposer's matching: take the largest entry, strike its row and column, repeat.

    Returns (generated, reference) pairs, min(G, R) of them, in the order taken.
    """
    work = np.array(sim, dtype=np.float64, copy=True)
    pairs: Pairs = []
    for _ in range(min(work.shape)):
        row, col = np.unravel_index(np.argmax(work), work.shape)
        pairs.append((int(row), int(col)))
        work[row, :] = -np.inf
        work[:, col] = -np.inf
    return pairs


def hungarian_matching(sim: np.ndarray) -> Pairs:
    """Matching of maximum total similarity (Kuhn-Munkres); pairs sorted by reference."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.size == 0:
        return []
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return sorted(((int(r), int(c)) for r, c in zip(rows, cols)), key=lambda p: p[1])


def match(sim: np.ndarray, method: str = "hungarian") -> Pairs:
    """Pairs by ``method``: "hungarian" (max total) or "greedy" (FastComposer)."""
    if method == "hungarian":
        return hungarian_matching(sim)
    if method == "greedy":
        return greedy_matching(sim)
    raise ValueError(f"unknown matching {method!r} (hungarian | greedy)")


def fastcomposer_identity(sim: np.ndarray) -> float:
    """FastComposer identity score of one image from its (G, R) similarity matrix.

    The R largest generated faces are greedily matched to the R references; the score is
    the minimum of ``max(cos, 0)`` over the matched pairs. Fewer than R faces (no face for
    a single subject included) -> 0. For R = 1 this is ``max(cos(largest face, ref), 0)``.
    """
    sim = np.asarray(sim, dtype=np.float64)
    num_refs = sim.shape[1]
    if sim.shape[0] < num_refs or num_refs == 0:
        return 0.0
    top = sim[:num_refs]  # the R largest faces
    return float(min(max(top[g, r], 0.0) for g, r in greedy_matching(top)))


def multi_sim(sim: np.ndarray, generated: np.ndarray, matching: str = "hungarian") -> float:
    """InstantFamily MultiSim (Eq. 11), max 2.

    N = 2: ``(S(A,A') + S(B,B'))/2 + (1 - S(A',B'))``. N > 2 (docs/methods.md §1 Decision):
    mean matched SingleSim + (1 - mean pairwise cosine of the matched generated faces).
    The N largest generated faces are matched to the references (``matching``); fewer
    faces than references -> 0. N = 1 reduces to SingleSim + 1.

    Args:
        sim: (G, N) generated-face x reference cosines.
        generated: (G, D) generated face embeddings, same order as ``sim``'s rows.
    """
    sim, generated = np.asarray(sim, dtype=np.float64), np.asarray(generated)
    num_refs = sim.shape[1]
    if sim.shape[0] < num_refs or num_refs == 0:
        return 0.0
    pairs = match(sim[:num_refs], matching)
    identity = float(np.mean([sim[g, r] for g, r in pairs]))
    matched = generated[[g for g, _ in pairs]]  # (N, D) in reference order
    faces = cosine_matrix(matched, matched)
    upper = faces[np.triu_indices(num_refs, k=1)]
    return identity + 1.0 - (float(upper.mean()) if upper.size else 0.0)


def matched_identity(sim: np.ndarray, matching: str = "hungarian") -> float:
    """Mean cosine of the matched pairs of the N largest faces (0 with too few faces)."""
    sim = np.asarray(sim, dtype=np.float64)
    num_refs = sim.shape[1]
    if sim.shape[0] < num_refs or num_refs == 0:
        return 0.0
    return float(np.mean([sim[g, r] for g, r in match(sim[:num_refs], matching)]))


def mixing_matrix(sims: Iterable[np.ndarray], matching: str = "hungarian") -> np.ndarray:
    """Identity-mixing matrix (R, R): entry (i, j) is the mean cosine between the generated
    face matched to reference i and reference j, over the images where i was matched.

    A strong diagonal with a weak off-diagonal means identities stay apart; a bright
    off-diagonal entry (i, j) means face i also resembles j (identity leakage). Rows of
    references never matched are NaN.
    """
    sims = [np.asarray(s, dtype=np.float64) for s in sims]
    size = sims[0].shape[1] if sims else 0
    total, count = np.zeros((size, size)), np.zeros(size)
    for sim in sims:
        for g, r in match(sim[:size], matching):
            total[r] += sim[g]
            count[r] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count[:, None]


def face_sim(sim: np.ndarray) -> float:
    """StoryMaker Face Sim of one single-subject image: cosine (buffalo_l ArcFace) of the
    largest generated face and the reference; 0 without a face (counts in the mean)."""
    sim = np.asarray(sim, dtype=np.float64)
    return float(sim[0, 0]) if sim.shape[0] and sim.shape[1] else 0.0


def detected(num_faces: int, num_subjects: int = 1) -> float:
    """SeFi-IDE Detect for one image: 1 when at least ``num_subjects`` faces were found."""
    return float(num_faces >= num_subjects)


def detect_rate(face_counts: Sequence[int], num_subjects: int = 1) -> float:
    """Fraction of images with at least ``num_subjects`` detected faces."""
    return float(np.mean([detected(n, num_subjects) for n in face_counts])) if face_counts \
        else 0.0


def id_with_prompt(identity: float, clip_score: float, threshold: float = 0.23) -> float:
    """SeFi-IDE ID(P): the identity score, counted as 0 when the image's CLIP text score is
    below ``threshold`` (an image that ignores the prompt earns no identity credit)."""
    return float(identity) if clip_score >= threshold else 0.0


def clip_t(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """CLIP-T / TextSim per image: cos(E_ci(image), E_ct(prompt)), (B, D) x (B, D) -> (B,)."""
    return paired_cosine(image_embeddings, text_embeddings)


def clip_i(image_embeddings: np.ndarray, reference_embeddings: np.ndarray) -> np.ndarray:
    """CLIP-I per image: cosine of generated and reference CLIP image embeddings -> (B,)."""
    return paired_cosine(image_embeddings, reference_embeddings)


def expression_score(image_embeddings: np.ndarray, emotion_embeddings: np.ndarray) -> np.ndarray:
    """PortraitBooth expression coefficient: CLIP score of each image with the text
    embedding of its emotion word, (B, D) x (B, D) -> (B,)."""
    return paired_cosine(image_embeddings, emotion_embeddings)


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Mean, population standard deviation (numpy ``std``, ddof=0) and count; NaNs skipped."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(array.mean()), "std": float(array.std()), "n": int(array.size)}


def summarize_rows(rows: Sequence[dict], metrics: Sequence[str],
                   group_by: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """``{group: {metric: summary}}`` over per-image rows; group "all" without ``group_by``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[str(row[group_by]) if group_by else "all"].append(row)
    return {group: {m: summarize(r.get(m) for r in members) for m in metrics}
            for group, members in groups.items()}
