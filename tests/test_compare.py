"""``eval.py --compare`` on two small synthetic result folders written by
``ldm_ext/evaluation/report.write_outputs`` (no model): the methods x metrics table, per-category
and per-N plots, mixing matrices up to N = 5, grids with a missing image, and the errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm_ext.evaluation import cli as evaluate
from ldm_ext.evaluation import subjects as subject_plan
from ldm_ext.evaluation.grid_labels import grid_layout
from ldm_ext.evaluation.report import stats_cell, write_outputs
from ldm_ext.eval_config import load_eval_config

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "eval" / "tiny.yaml")
IDS = ["s1", "s2", "s3", "s4", "s5"]


def fake_result(root: Path, name: str, colour: tuple, identity: float,
                method: str | None = None, faces_of_five: int = 5,
                second: float = 0.9, overrides: tuple[str, ...] = ()) -> Path:
    """A results folder as eval.py writes it: N = 1, 2, 5 subjects, 2 prompts, one image
    each, solid ``colour`` images, identities near ``identity`` (``second`` by the second
    encoder, dlib), mixing of strength ``identity`` on the diagonal; N = 5 images show
    ``faces_of_five`` faces; ``overrides`` change its eval config."""
    cfg = load_eval_config(TINY, [f"name={name}", f"output_dir={root}", "subjects.root=x",
                                  "subjects.num_ids=[1,2,5]", "scoring.second_encoder=dlib",
                                  *overrides])
    records = subject_plan.plan(cfg, {sid: {"class_word": "woman"} for sid in IDS})
    out, rows, sims = root / name, [], []
    (out / "images").mkdir(parents=True)
    for i, record in enumerate(records):
        Image.new("RGB", (32, 32), colour).save(out / "images" / record["file"])
        n = len(record["subjects"])
        rows.append({**record, "faces": n, "identity": identity + 0.01 * (i % 3),
                     "identity_second": second + 0.01 * (i % 3), "clip_t": 0.2,
                     "multi_sim": 1.5 if n > 1 else None})
        sim = np.full((n, n), 0.1) + np.eye(n) * (identity - 0.1)
        sims.append(sim[:faces_of_five] if n == 5 else sim)
    lines = [json.dumps({**r, "method": method} if method else r) for r in records]
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    write_outputs(cfg, out, out / "images", rows, sims)
    return out


@pytest.fixture(scope="module")
def two_results(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("results")
    # A leads B by the protocol's encoder, not by the second: the report must say so
    return (fake_result(root, "A", (200, 0, 0), 0.8, "instantfamily", second=0.9),
            fake_result(root, "B", (0, 0, 200), 0.5, faces_of_five=4, second=0.92))


def test_single_report_handles_five_subjects(two_results):
    a, b = two_results
    summary = json.loads((a / "summary.json").read_text())
    assert set(summary["by_num_ids"]) == {"1", "2", "5"}
    assert np.array(summary["mixing"]["5"]).shape == (5, 5)
    assert "## Identity mixing, N = 5" in (a / "report.md").read_text()
    b_mixing = json.loads((b / "summary.json").read_text())["mixing"]["5"]
    assert b_mixing[4] == [None] * 5  # slot 4 never matched (4 faces): NaN -> null


def test_compare_report(two_results, tmp_path):
    a, b = two_results
    first = json.loads((b / "manifest.jsonl").read_text().splitlines()[0])["file"]
    (b / "images" / first).rename(tmp_path / "moved.png")  # B lacks one image
    out = tmp_path / "cmp"
    try:
        assert evaluate.main(["--compare", str(a), str(b), "--out", str(out)]) == 0
    finally:
        (tmp_path / "moved.png").rename(b / "images" / first)
    report = (out / "report.md").read_text()
    for folder, label in ((a, "A (instantfamily)"), (b, "B")):
        overall = json.loads((folder / "summary.json").read_text())["overall"]
        assert f"| {label} | 10 | " in report
        assert stats_cell(overall["identity"]) in report
    assert "| MultiSim \\ N | 1 | 2 | 5 |" in report  # the paper's name, not multi_sim
    assert "## Identity by two encoders" in report and "| A | `unknown` |" in report
    assert "> **Warning:** A leads B on the protocol encoder" in report
    assert "B leads A" not in report
    assert report.count("| B | 0.500 | 0.100 |") == 2  # mixing N = 2 and 5 (row 4 unmatched)
    for plot in ("by_category", "by_num_ids", "mixing_n2", "mixing_n5"):
        assert f"plots/{plot}.png" in report and (out / "plots" / f"{plot}.png").is_file()
    assert f"- missing: B: `{first}`" in report
    grid = out / "grids" / f"{Path(first).stem.rsplit('__', 1)[0]}.png"
    assert f"grids/{grid.name}" in report
    pixels, layout = np.asarray(Image.open(grid)), grid_layout(grid)
    assert layout["grid"] == [1, 2]  # rows A, B; one column (one image per prompt)
    assert layout["rows"] == ["A (instantfamily)", "B"] and layout["columns"] == ["k=0"]
    assert "N=" in layout["title"] and " · seed 42" in layout["title"]
    (x, y), (_, h) = layout["origin"], layout["cell"]
    assert tuple(pixels[y + 2, x + 2]) == (200, 0, 0)
    assert tuple(pixels[y + h + 2, x + 2]) == (225, 225, 225)  # B's missing image
    assert len(list((out / "grids").glob("*.png"))) == 3  # one per N (1, 2, 5): one category


def test_compare_default_folder(two_results):
    a, b = two_results
    assert evaluate.main(["--compare", str(a), str(b)]) == 0
    assert (a.parent / "compare_A_B" / "report.md").is_file()


def test_compare_errors_name_the_folder(two_results, tmp_path, capsys):
    a, _ = two_results
    not_result = tmp_path / "just_images"
    not_result.mkdir()
    Image.new("RGB", (8, 8)).save(not_result / "x__p00__0.png")
    for folder in (not_result, tmp_path / "absent"):
        assert evaluate.main(["--compare", str(a), str(folder)]) == 2
        assert f"{folder}: not an eval result folder" in capsys.readouterr().err
    for bad in (["--compare", str(a)], ["--compare", str(a), str(a), "--images", "x"],
                ["--checkpoint", "x", "--config", TINY, "--out", "y"]):
        with pytest.raises(SystemExit):
            evaluate.parse_args(bad)


def test_compare_refuses_other_protocols(two_results, tmp_path, capsys):
    """Images pair by file name: under another prompt set ``p00`` is another prompt, so
    results of different protocols are refused, each differing field named."""
    a, _ = two_results
    other = fake_result(tmp_path, "C", (0, 200, 0), 0.6,
                        overrides=("prompts.set=storymaker", "generation.size=256"))
    out = tmp_path / "cmp"
    assert evaluate.main(["--compare", str(a), str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ('prompts.set "fastcomposer_single" (A) vs "storymaker" (C); generation.size 128 '
            "(A) vs 256 (C): compare results of one protocol") in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    scored = fake_result(tmp_path, "D", (0, 200, 0), 0.6, overrides=("scoring.seed=1",))
    assert evaluate.main(["--compare", str(a), str(scored), "--out", str(out)]) == 2
    assert "scoring.seed 0 (A) vs 1 (D)" in capsys.readouterr().err  # random scorers differ
    # the second identity encoder is the method's to differ in (auto: never its own family)
    second = fake_result(tmp_path, "E", (0, 200, 0), 0.6,
                         overrides=("scoring.second_encoder=facenet",))
    assert evaluate.main(["--compare", str(a), str(second), "--out", str(out)]) == 0
