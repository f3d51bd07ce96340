"""Scoring of generated images, shared by ``eval.py`` and the evaluation callback.

``score_images`` turns images + their manifest records + reference photos into one row
of metrics per image (metrics.py) and the generated x reference similarity
matrices (for the identity-mixing matrix); ``summarize`` gives mean +- std per metric,
overall and per prompt category.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ldm_ext.evaluation import metrics as M
from ldm_ext.evaluation.scorers import CLIPScorer, FaceScorer, build_face_scorer
from ldm_ext.seeding import seeded

METRICS = ("faces", "detect", "identity", "identity_second", "single_sim", "multi_sim",
           "matched_identity", "clip_t", "id_p", "face_sim", "clip_i", "expression")


@dataclass
class Scorers:
    """Networks and settings the metrics need; a None scorer skips its metrics."""

    faces: FaceScorer
    clip_t: CLIPScorer | None = None
    clip_i: CLIPScorer | None = None
    face_sim: FaceScorer | None = None
    matching: str = "hungarian"
    id_p_threshold: float = 0.23
    emotions: list[str] = field(default_factory=list)
    second: FaceScorer | None = None  # identity by an independent encoder (identity_second)


def build_scorers(scoring, device: str = "cpu") -> Scorers:
    """Scorers from an ``eval_config.ScoringConfig`` (missing weights raise, naming them).

    Each scorer is built from ``scoring.seed`` on its own (``seeded_build``): a ``random``
    one is the same network in every process, whichever other scorers are on."""
    s = scoring
    faces = seeded_build(s.seed, build_face_scorer, s.detector, s.face_encoder,
                         s.face_weights, s.min_face_score, device, s.batch_size)
    face_sim = (seeded_build(s.seed, build_face_scorer, s.face_sim_detector, s.face_sim_encoder,
                             s.face_sim_weights, 0.5, device, s.batch_size)
                if s.face_sim_encoder else None)
    clip_t = (seeded_build(s.seed, CLIPScorer, s.clip_t_model, s.clip_t_pretrained, device,
                           s.batch_size) if s.clip_t_model else None)
    clip_i = (seeded_build(s.seed, CLIPScorer, s.clip_i_model, s.clip_i_pretrained, device,
                           s.batch_size) if s.clip_i_model else None)
    return Scorers(faces, clip_t, clip_i, face_sim, s.matching, s.id_p_threshold,
                   list(s.emotions), seeded_build(s.seed, build_second_scorer, s, device))


def seeded_build(seed: int, build, *args):
    """``build(*args)`` with every random draw it makes taken from ``seed``."""
    with seeded(seed):
        return build(*args)


def random_scorers(scoring) -> dict[str, int]:
    """Scorer -> the seed its random initialisation is drawn from, for every scorer whose
    weights are ``random`` (recorded in summary.json: such scores mean nothing, but they
    are reproducible)."""
    from ldm_ext.eval_config import second_encoder_name

    s = scoring
    weights = {"faces": s.face_weights,
               "face_sim": s.face_sim_weights if s.face_sim_encoder else None,
               "clip_t": s.clip_t_pretrained if s.clip_t_model else None,
               "clip_i": s.clip_i_pretrained if s.clip_i_model else None,
               "second": s.second_weights if second_encoder_name(s) else None}
    return {name: s.seed for name, w in weights.items() if w == "random"}


def build_second_scorer(scoring, device: str = "cpu") -> FaceScorer | None:
    """The second identity scorer: its encoder with its own detector and alignment
    (``eval_config.SECOND_DETECTORS``); None when ``second_encoder`` is null. dlib not
    installed raises ``FaceModelMissing`` naming the extra to install."""
    from ldm_ext.eval_config import SECOND_DETECTORS, second_encoder_name
    from ldm_ext.face import FaceModelMissing

    encoder = second_encoder_name(scoring)
    if encoder is None:
        return None
    detector = scoring.second_detector or SECOND_DETECTORS[encoder]
    min_score = 0.5 if detector == "insightface" else 0.0
    try:
        return build_face_scorer(detector, encoder, scoring.second_weights, min_score, device,
                                 scoring.batch_size)
    except ImportError as error:
        raise FaceModelMissing(f"second identity encoder {encoder}: {error}; install the "
                               "face extra (pip install idforge[face]) or set "
                               "scoring.second_encoder=null") from None


@dataclass
class References:
    """Per-subject reference embeddings, computed once per run."""

    faces: dict[str, np.ndarray]  # id -> (D,) largest face of its photo
    clip: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (D,) CLIP-I image
    face_sim: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (D,) ArcFace
    second: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (D,) second encoder


def embed_references(scorers: Scorers, photos: dict[str, np.ndarray]) -> References:
    """Reference embeddings of every subject photo (uint8 RGB arrays by id)."""
    ids = list(photos)
    images = [photos[i] for i in ids]
    refs = References(dict(zip(ids, scorers.faces.references(images))))
    if scorers.clip_i is not None:
        refs.clip = dict(zip(ids, scorers.clip_i.encode_images(images)))
    if scorers.face_sim is not None:
        refs.face_sim = dict(zip(ids, scorers.face_sim.references(images)))
    if scorers.second is not None:
        refs.second = dict(zip(ids, scorers.second.references(images)))
    return refs


def _identity_metrics(sim: np.ndarray, faces: np.ndarray, matching: str) -> dict:
    """Face metrics of one image from its (G, N) similarity matrix and (G, D) faces."""
    num = sim.shape[1]
    row = {"faces": int(sim.shape[0]), "detect": M.detected(sim.shape[0], num),
           "identity": M.fastcomposer_identity(sim),
           "multi_sim": M.multi_sim(sim, faces, matching) if num > 1 else None,
           "matched_identity": M.matched_identity(sim, matching)}
    row["single_sim"] = (float(sim[0, 0]) if len(sim) else 0.0) if num == 1 else None
    return row


def score_images(scorers: Scorers, images: Sequence, records: Sequence[dict],
                 refs: References) -> tuple[list[dict], list[np.ndarray]]:
    """One metrics row per image (record fields + METRICS) and its (G, N) similarities.

    Records need ``subjects`` (ids, in slot order), ``clip_prompt`` (prompt without the
    identity marker) and ``prompt_index``/``category`` for grouping.
    """
    faces = scorers.faces.embed(images)
    sims = [M.cosine_matrix(f, np.stack([refs.faces[s] for s in r["subjects"]]))
            if len(f) else np.zeros((0, len(r["subjects"]))) for f, r in zip(faces, records)]
    rows = [{**r, **_identity_metrics(sim, f, scorers.matching)}
            for r, sim, f in zip(records, sims, faces)]
    _add_clip_metrics(scorers, images, rows, refs)
    if scorers.second is not None:
        for row, found in zip(rows, scorers.second.embed(images)):
            ref = np.stack([refs.second[s] for s in row["subjects"]])  # (N, D)
            sim = M.cosine_matrix(found, ref) if len(found) else np.zeros((0, len(ref)))
            row["identity_second"] = M.fastcomposer_identity(sim)
    if scorers.face_sim is not None:
        for row, found in zip(rows, scorers.face_sim.embed(images)):
            ref = np.stack([refs.face_sim[row["subjects"][0]]])
            row["face_sim"] = M.face_sim(M.cosine_matrix(found, ref)) if len(found) else 0.0
    return rows, sims


def _add_clip_metrics(scorers: Scorers, images: Sequence, rows: list[dict],
                      refs: References) -> None:
    """CLIP-T, ID(P), expression (CLIP-T model) and CLIP-I (single subject) in place."""
    if scorers.clip_t is not None:
        embedded = scorers.clip_t.encode_images(images)
        text = M.clip_t(embedded, scorers.clip_t.encode_texts([r["clip_prompt"] for r in rows]))
        for row, score, emb in zip(rows, text, embedded):
            row["clip_t"] = float(score)
            row["id_p"] = M.id_with_prompt(row["identity"], score, scorers.id_p_threshold)
            word = next((w for w in scorers.emotions if w in row["clip_prompt"].split()), None)
            if word is not None:
                row["expression"] = float(M.expression_score(
                    emb[None], scorers.clip_t.encode_texts([word]))[0])
    if scorers.clip_i is not None:
        embedded = scorers.clip_i.encode_images(images)
        for row, emb in zip(rows, embedded):
            ref = np.mean([refs.clip[s] for s in row["subjects"]], axis=0)
            row["clip_i"] = float(M.clip_i(emb[None], ref[None])[0])


def summarize(rows: Sequence[dict]) -> dict:
    """Mean ± population std per metric: overall, per prompt category, per N."""
    present = [m for m in METRICS if any(r.get(m) is not None for r in rows)]
    with_n = [{**r, "num_ids": len(r["subjects"])} for r in rows]
    return {"num_images": len(rows),
            "overall": M.summarize_rows(rows, present)["all"] if rows else {},
            "by_category": M.summarize_rows(rows, present, "category"),
            "by_num_ids": M.summarize_rows(with_n, present, "num_ids")}
