"""Metrics against hand-computed values (ldm_ext/evaluation/metrics.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ldm_ext.evaluation import metrics as M


def unit(*angles_deg: float) -> np.ndarray:
    """2-D unit vectors at the given angles: cos between them is cos(angle difference)."""
    rad = np.radians(angles_deg)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_cosine_and_single_sim():
    a, b = np.array([[3.0, 4.0]]), np.array([[4.0, 3.0]])
    assert M.cosine_matrix(a, b)[0, 0] == pytest.approx(24 / 25)
    assert M.single_sim(a, b) == pytest.approx(0.96)
    assert M.paired_cosine(unit(0, 90), unit(60, 90)) == pytest.approx([0.5, 1.0])


def test_greedy_differs_from_hungarian():
    sim = np.array([[0.9, 0.8], [0.7, 0.1]])
    # greedy takes 0.9 first, then is left with 0.1; Hungarian prefers 0.8 + 0.7 = 1.5
    assert M.greedy_matching(sim) == [(0, 0), (1, 1)]
    assert M.hungarian_matching(sim) == [(1, 0), (0, 1)]
    assert M.match(sim, "greedy") == M.greedy_matching(sim)
    with pytest.raises(ValueError):
        M.match(sim, "best")


def test_fastcomposer_single_no_face_negative_and_extra_faces():
    assert M.fastcomposer_identity(np.zeros((0, 1))) == 0.0  # no face
    assert M.fastcomposer_identity(np.array([[-0.3]])) == 0.0  # max(cos, 0)
    # the largest face (row 0) counts even when a smaller one matches better
    assert M.fastcomposer_identity(np.array([[0.4], [0.9]])) == pytest.approx(0.4)


def test_fastcomposer_multi_greedy_min_and_too_few_faces():
    sim = np.array([[0.9, 0.8], [0.7, 0.1], [0.95, 0.95]])  # third face is not among 2 largest
    assert M.fastcomposer_identity(sim) == pytest.approx(0.1)  # greedy pairs 0.9 and 0.1
    assert M.fastcomposer_identity(np.array([[0.9, 0.8]])) == 0.0  # 1 face, 2 subjects
    assert M.fastcomposer_identity(np.array([[0.6, -0.2], [0.1, 0.5]])) == pytest.approx(0.5)


def test_multi_sim_eq11_two_ids():
    gen = unit(0, 60)  # S(A', B') = cos 60 = 0.5
    sim = np.array([[0.8, 0.1], [0.2, 0.6]])
    # (0.8 + 0.6) / 2 + (1 - 0.5) = 1.2
    assert M.multi_sim(sim, gen) == pytest.approx(1.2)
    swapped = sim[::-1].copy()  # faces in the other order: matching finds the same pairs
    assert M.multi_sim(swapped, gen[::-1].copy()) == pytest.approx(1.2)
    assert M.multi_sim(sim[:1], gen[:1]) == 0.0  # fewer faces than ids


def test_multi_sim_three_ids_mean_pairwise():
    gen = unit(0, 90, 180)  # pairwise cos: 0, -1, 0 -> mean -1/3
    sim = np.diag([0.9, 0.6, 0.3])
    assert M.multi_sim(sim, gen) == pytest.approx(0.6 + 1 + 1 / 3)
    assert M.matched_identity(sim) == pytest.approx(0.6)
    assert M.multi_sim(np.array([[0.7]]), unit(0)) == pytest.approx(1.7)


def test_mixing_matrix_shows_leakage():
    a = np.array([[0.9, 0.5], [0.2, 0.8]])  # face 0 -> ref 0, face 1 -> ref 1
    b = np.array([[0.1, 0.6], [0.7, 0.3]])  # face 1 -> ref 0, face 0 -> ref 1
    mix = M.mixing_matrix([a, b])
    assert mix == pytest.approx(np.array([[0.8, 0.4], [0.15, 0.7]]))
    only_one = M.mixing_matrix([np.array([[0.5, 0.2]])])
    assert only_one[0] == pytest.approx([0.5, 0.2]) and np.isnan(only_one[1]).all()


def test_five_ids_identity_multi_sim_and_mixing():
    sim = np.full((5, 5), 0.1)
    sim[[0, 1, 2, 3, 4], [3, 0, 4, 1, 2]] = 0.9  # face g belongs to a permuted reference
    gen = np.eye(5)  # orthogonal faces: no pairwise similarity
    assert M.fastcomposer_identity(sim) == pytest.approx(0.9)
    assert M.fastcomposer_identity(sim[:4]) == 0.0  # four faces for five subjects
    assert M.multi_sim(sim, gen) == pytest.approx(0.9 + 1.0)
    assert M.multi_sim(sim, gen, "greedy") == pytest.approx(1.9)
    mix = M.mixing_matrix([sim, sim[:3]])  # the second image: faces of refs 3, 0, 4 only
    assert np.diag(mix) == pytest.approx([0.9] * 5)
    assert mix[~np.eye(5, dtype=bool)] == pytest.approx([0.1] * 20)


def test_face_sim_detect_and_id_p():
    assert M.face_sim(np.array([[0.42], [0.9]])) == pytest.approx(0.42)
    assert M.face_sim(np.zeros((0, 1))) == 0.0
    assert M.detect_rate([0, 1, 3, 2]) == pytest.approx(0.75)
    assert M.detect_rate([0, 1, 3, 2], num_subjects=2) == pytest.approx(0.5)
    assert M.id_with_prompt(0.7, 0.25) == 0.7
    assert M.id_with_prompt(0.7, 0.22) == 0.0
    assert M.id_with_prompt(0.7, 0.23) == 0.7


def test_clip_scores_and_expression():
    images, texts = unit(0, 45), unit(60, 45)
    assert M.clip_t(images, texts) == pytest.approx([0.5, 1.0])
    assert M.clip_i(images * 3, images) == pytest.approx([1.0, 1.0])
    assert M.expression_score(unit(0), unit(180)) == pytest.approx([-1.0])


def test_summaries_population_std_and_groups():
    summary = M.summarize([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert summary["mean"] == 2.5 and summary["n"] == 4
    assert summary["std"] == pytest.approx(math.sqrt(1.25))  # population, not sample
    assert M.summarize([])["n"] == 0
    rows = [{"cat": "a", "x": 1.0}, {"cat": "a", "x": 3.0}, {"cat": "b", "x": 5.0}]
    groups = M.summarize_rows(rows, ["x"], group_by="cat")
    assert groups["a"]["x"]["mean"] == 2.0 and groups["a"]["x"]["std"] == 1.0
    assert M.summarize_rows(rows, ["x"])["all"]["x"]["mean"] == 3.0
