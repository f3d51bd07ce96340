"""Identity by two encoders (ldm_ext/evaluation/identity_check.py, eval_config's second encoder,
MethodConfig.identity_encoder): the agreement, the warnings on constructed cases where one
encoder's scores are perturbed, and the choice of the second encoder. No model loads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ldm_ext.evaluation import identity_check as check
from ldm_ext.evaluation.report import write_outputs
from ldm_ext import eval_config
from ldm_ext.eval_config import (ScoringConfig, encoder_family, load_eval_config, scorer_names,
                                 second_encoder_name)
from ldm_ext.registry import METHODS, identity_encoder, method_spec

ENCODERS = {"protocol": "mtcnn+facenet/vggface2", "second": "dlib+dlib", "method": "none"}


def _rows(protocol: np.ndarray, second: np.ndarray) -> list[dict]:
    return [{"identity": float(p), "identity_second": float(s)} for p, s in zip(protocol,
                                                                                 second)]


@pytest.fixture()
def scores() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.2, 0.8, 40)


def test_agreeing_encoders_raise_no_flag(scores):
    rows = _rows(scores, 0.85 + 0.1 * scores)  # another scale, the same order
    result = check.identity_check(rows, ENCODERS, 0.5)
    assert result["rank_corr"] == pytest.approx(1.0) and result["n"] == 40
    assert not result["flagged"] and result["warnings"] == []
    lines = check.report_lines(result, {})
    assert "## Identity by two encoders" in lines and "No warning" in "\n".join(lines)


def test_flag_fires_when_one_encoders_scores_are_perturbed(scores):
    shuffled = np.random.default_rng(1).permutation(scores)  # the second disagrees per image
    result = check.identity_check(_rows(scores, shuffled), ENCODERS, 0.5)
    assert result["rank_corr"] < 0.5 and result["flagged"]
    (warning,) = result["warnings"]
    assert "agree weakly" in warning and f"{result['rank_corr']:.2f}" in warning
    assert "> **Warning:**" in "\n".join(check.report_lines(result, {}))


def test_rank_correlation_ignores_missing_and_is_undefined_when_constant():
    rows = [{"identity": 0.1, "identity_second": ""}, {"identity": "0.3"},
            *_rows(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.7, 0.6]))]
    rho, count = check.rank_correlation(rows)
    assert count == 3 and rho == pytest.approx(0.5)
    rho, count = check.rank_correlation(_rows(np.arange(4.0), np.zeros(4)))  # no face found
    assert rho != rho and count == 4
    assert not check.identity_check(_rows(np.arange(4.0), np.zeros(4)), ENCODERS, 0.5)["flagged"]


def test_the_methods_own_network_and_a_dependent_second_are_flagged(scores):
    rows = _rows(scores, scores)
    own = check.identity_check(rows, {**ENCODERS, "method": "facenet/vggface2"}, 0.5)
    (warning,) = own["warnings"]
    assert warning.startswith("the protocol scorer (mtcnn+facenet/vggface2)")
    lines = "\n".join(check.report_lines(own, {}))
    assert "`facenet/vggface2`" in lines and "| protocol | – | **yes** |" in lines
    arcface = check.identity_check(rows, {"protocol": "mtcnn+facenet/vggface2",
                                          "second": "insightface+insightface",
                                          "method": "arcface-r100/backbone.pth"}, 0.5)
    assert arcface["warnings"][0].startswith("the second scorer (insightface+insightface)")
    same = check.identity_check(rows, {**ENCODERS, "protocol": "mtcnn+dlib"}, 0.5)
    assert "not an independent check" in same["warnings"][0]


def _overall(protocol: np.ndarray, second: np.ndarray) -> dict:
    return {"identity": {"mean": protocol.mean(), "std": protocol.std(), "n": len(protocol)},
            "identity_second": {"mean": second.mean(), "std": second.std(), "n": len(second)}}


def test_a_lead_on_the_protocol_that_does_not_hold_on_the_second_is_flagged(scores):
    noise = np.random.default_rng(2).normal(0, 0.02, 40)
    enc = {"encoders": ENCODERS}
    a = ("A", _overall(scores + 0.1, 0.9 + 0.1 * scores + 0.01 + noise), enc)
    b = ("B", _overall(scores, 0.9 + 0.1 * scores + noise), enc)
    assert check.advantage_warnings([a, b]) == []  # A leads on both
    b_perturbed = ("B", _overall(scores, 0.9 + 0.1 * scores + 0.03 + noise), enc)
    (warning,) = check.advantage_warnings([a, b_perturbed])
    assert warning.startswith("A leads B on the protocol encoder")
    lines = "\n".join(check.compare_lines([a, b_perturbed]))
    assert f"> **Warning:** {warning}" in lines and "| A | `none` |" in lines
    other = ("B", b[1], {"encoders": {**ENCODERS, "second": "insightface+insightface"}})
    assert "different encoders" in check.advantage_warnings([a, other])[0]


def test_effect_is_standardised_and_undefined_without_scores():
    a, b = {"mean": 0.6, "std": 0.1, "n": 5}, {"mean": 0.5, "std": 0.1, "n": 5}
    assert check.effect(a, b) == pytest.approx(1.0) == -check.effect(b, a)
    assert check.effect(a, None) != check.effect(a, None)  # NaN
    assert check.effect(dict(a, std=0.0), dict(b, std=0.0)) == float("inf")


def test_second_encoder_auto_avoids_the_protocols_and_the_methods_arcface(monkeypatch,
                                                                          tmp_path):
    scoring = OmegaConf.structured(ScoringConfig)
    monkeypatch.setattr(eval_config, "BUFFALO_L", str(tmp_path))  # no buffalo_l: dlib
    assert second_encoder_name(scoring) == "dlib"
    (tmp_path / "w600k_r50.onnx").write_bytes(b"")
    (tmp_path / "det_10g.onnx").write_bytes(b"")
    assert second_encoder_name(scoring, "facenet/vggface2") == "insightface"
    assert second_encoder_name(scoring, "insightface/buffalo_l") == "dlib"  # StoryMaker
    assert second_encoder_name(OmegaConf.merge(scoring, {"face_encoder": "arcface"})) == "dlib"
    assert second_encoder_name(OmegaConf.merge(scoring, {"second_encoder": None})) is None
    names = scorer_names(OmegaConf.merge(scoring, {"second_encoder": "insightface"}))
    assert names == {"protocol": "mtcnn+facenet/vggface2", "second": "insightface+insightface"}
    assert [encoder_family(n) for n in ("mtcnn+dlib", "arcface-r50/x.pth", "unknown")] == \
        ["dlib", "arcface", None]


def test_every_method_names_its_face_encoder():
    """The generic hook: each registered method's config names the network it conditions
    on or optimises (or has none), so shared code never names a method."""
    encoders = {name: identity_encoder(OmegaConf.structured(method_spec(name).config_class))
                for name in METHODS}
    assert encoders == {"instantfamily": "facenet/vggface2", "portraitbooth": "facenet/vggface2",
                        "storymaker": "insightface/buffalo_l", "sefi_ide": "none"}
    storymaker = OmegaConf.structured(method_spec("storymaker").config_class)
    storymaker.face_encoder, storymaker.face_weights = "arcface", "backbone.pth"
    assert identity_encoder(storymaker) == "arcface-r100/backbone.pth"


def test_summary_and_report_of_a_run(tmp_path, scores):
    """write_outputs records both encoders, the method's and the check in summary.json."""
    tiny = Path(__file__).resolve().parent.parent / "configs" / "eval" / "tiny.yaml"
    cfg = load_eval_config(tiny, ["subjects.root=x", f"output_dir={tmp_path}",
                                  "method_encoder=facenet/random", "scoring.second_encoder=dlib"])
    (tmp_path / "images").mkdir()
    rows = [{"file": f"a__p00__{i}.png", "subjects": ["a"], "category": "c", "identity": p,
             "identity_second": p} for i, p in enumerate(scores[:5])]
    for row in rows:
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / row["file"])
    write_outputs(cfg, tmp_path, tmp_path / "images", rows, [np.ones((1, 1))] * 5)
    summary = json.loads((tmp_path / "summary.json").read_text())["identity_check"]
    assert summary["encoders"] == {"protocol": "mtcnn+facenet/random", "second": "dlib+dlib",
                                   "method": "facenet/random"}
    assert summary["rank_corr"] == pytest.approx(1.0) and summary["flagged"]  # own network
    report = (tmp_path / "report.md").read_text()
    assert "## Identity by two encoders" in report and "identity_two_encoders.png" in report
