"""Reports a paper reader understands: the papers' metric names, percent where the paper
compared with prints percent, the published figures beside the run's, a glossary line
per metric. A tiny eval of synthetic scores goes through ``write_outputs`` (no model)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ldm_ext.evaluation import subjects as subject_plan
from ldm_ext.evaluation.metric_names import GLOSSARY
from ldm_ext.evaluation.report import write_outputs
from ldm_ext.config import ConfigError
from ldm_ext.eval_config import PUBLISHED, load_eval_config, published_tables

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "configs" / "eval"


def tiny_eval(root: Path, config: str, scores: dict[str, float], *overrides: str) -> Path:
    """A results folder for two subjects x two prompts of ``config``, every image scored
    ``scores`` (+0.01 per image); returns its report.md."""
    cfg = load_eval_config(EVAL / f"{config}.yaml", [
        "name=run", f"output_dir={root}", "subjects.root=x", "scoring.second_encoder=dlib",
        "prompts.limit=2", "generation.images_per_prompt=1", *overrides])
    records = subject_plan.plan(cfg, {sid: {"class_word": "woman"} for sid in ("a", "b")})
    out = root / "run"
    (out / "images").mkdir(parents=True)
    rows, sims = [], []
    for i, record in enumerate(records):
        Image.new("RGB", (32, 32), (90, 20, 20)).save(out / "images" / record["file"])
        n = len(record["subjects"])
        rows.append({**record, "faces": n, "detect": 1.0, "identity_second": 0.9,
                     **{m: v + 0.01 * i for m, v in scores.items()}})
        sims.append(np.eye(n) * 0.5)
    write_outputs(cfg, out, out / "images", rows, sims)
    return out / "report.md"


@pytest.fixture(scope="module")
def storymaker_report(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("results")
    return tiny_eval(root, "storymaker", {"identity": 0.5, "clip_t": 0.2, "face_sim": 0.6,
                                          "clip_i": 0.7}).read_text()


def test_report_uses_the_papers_names_and_percent(storymaker_report):
    """StoryMaker prints Face Sim., CLIP-T and CLIP-I in percent: so does its report, in
    every table; metrics.csv keeps the machine names."""
    overall = storymaker_report.split("## Overall")[1].split("##")[0]
    header = overall.strip().splitlines()[0]
    assert "| Face Sim. (%) | CLIP-I (%) |" in header and "CLIP-T (%)" in header
    assert "Identity Preservation" in header and "Identity Preservation (2nd encoder)" in header
    assert not re.search(r"\| (face_sim|clip_t|clip_i|identity) ", storymaker_report)
    # means 0.615, 0.215, 0.715 over the 4 images -> 61.50, 21.50, 71.50 percent
    assert "| 21.50 ± 1.12 | 61.50 ± 1.12 | 71.50 ± 1.12 |" in overall
    assert "| 0.515 ± 0.011 |" in overall  # identity is a fraction in the papers


def test_report_quotes_the_published_table_beside_the_run(storymaker_report):
    section = storymaker_report.split("## Published figures")[1].split("\n## ")[0]
    assert "### StoryMaker, Table 1 (single character)" in section
    assert "| StoryMaker(Ours) | 67.36 | 21.75 | 79.51 |" in section
    assert "| InstantID | 73.90 | 23.39 | 72.50 |" in section
    assert "| **this run** | 61.50 | 21.50 | 71.50 |" in section  # same unit and digits


def test_multi_subject_table_compares_the_n2_images_only(tmp_path):
    """InstantFamily's Table 2 is MultiSim of two identities: the run's row is its N = 2
    mean (N = 1 images have no MultiSim), with ± std as the paper prints it."""
    report = tiny_eval(tmp_path, "fastcomposer_multi", {"identity": 0.4, "clip_t": 0.2,
                                                        "multi_sim": 1.5},
                       "subjects.num_ids=[1,2]").read_text()
    section = report.split("## Published figures")[1].split("\n## ")[0]
    assert "| InstantFamily(Ours) | 1.620 ± 0.153 | 0.205 ± 0.050 |" in section
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    two = summary["by_num_ids"]["2"]["multi_sim"]
    assert f"| **this run (N = 2)** | {two['mean']:.3f} ± {two['std']:.3f} |" in section
    assert "| FastComposer | 0.431 | 0.243 |" in section  # PortraitBooth's Table 3 too


def test_glossary_line_per_metric_with_encoder_and_range(storymaker_report):
    glossary = storymaker_report.split("## Glossary")[1]
    lines = [line for line in glossary.splitlines() if line.startswith("- **")]
    shown = ["faces", "detect", "identity", "identity_second", "clip_t", "face_sim", "clip_i"]
    assert [re.search(r"\(`(\w+)` in metrics.csv\)", line)[1] for line in lines] == shown
    by_metric = dict(zip(shown, lines))
    assert "`mtcnn+facenet/vggface2`" in by_metric["identity"]
    assert "`dlib+dlib`" in by_metric["identity_second"]  # the second encoder, by name
    assert "`insightface+insightface`" in by_metric["face_sim"]
    assert "`ViT-H-14` (laion2b_s32b_b79k)" in by_metric["clip_i"]
    assert "range 0 to 1." in by_metric["identity"]
    assert "range −100 to 100 %. Shown in percent" in by_metric["clip_t"]
    assert storymaker_report.rstrip().endswith(lines[-1])  # the report's last section


def test_a_protocol_without_tables_has_no_published_section(tmp_path):
    report = tiny_eval(tmp_path, "tiny", {"identity": 0.5, "clip_t": 0.2}).read_text()
    assert "## Published figures" not in report and "| CLIP-T |" in report
    assert "(%)" not in report


def test_published_file_quotes_cells_as_printed():
    """Every cell is a string as the paper prints it (digits kept: "0.250", "60.70"), every
    table names its source, and every eval config's table exists."""
    tables = published_tables(list(OmegaConf.load(PUBLISHED)))
    printed = re.compile(r"^(–|\d+\.\d+( ± \d+\.\d+)?)$")
    for name, table in tables.items():
        assert table["source"] and table["unit"] in ("fraction", "percent"), name
        assert set(table["columns"]) <= set(GLOSSARY), name
        for row in table["rows"].values():
            assert set(row) == set(table["columns"]), name
            assert all(isinstance(c, str) and printed.match(c) for c in row.values()), row
    for path in EVAL.glob("*.yaml"):
        load_eval_config(path)  # names only tables the file has
    with pytest.raises(ConfigError, match="published='nope'.*storymaker_table1"):
        load_eval_config(EVAL / "tiny.yaml", ["published=[nope]"])


def test_compare_shows_each_runs_row_under_the_published_table(tmp_path):
    from ldm_ext.evaluation.compare import compare

    scores = {"identity": 0.5, "clip_t": 0.2, "face_sim": 0.6, "clip_i": 0.7}
    first = tiny_eval(tmp_path / "a", "storymaker", scores).parent
    second = tiny_eval(tmp_path / "b", "storymaker", {**scores, "face_sim": 0.3}).parent
    report = (compare([first, second], tmp_path / "cmp") / "report.md").read_text()
    section = report.split("## Published figures")[1].split("\n## ")[0]
    assert "| StoryMaker(Ours) | 67.36 | 21.75 | 79.51 |" in section
    assert "| **a/run** | 61.50 | 21.50 | 71.50 |" in section
    assert "| **b/run** | 31.50 | 21.50 | 71.50 |" in section
    assert "| Face Sim. (%) \\ category |" in report and "## Glossary" in report


def test_console_summary_uses_the_papers_names():
    from ldm_ext.evaluation.metric_names import Display, overall_lines

    lines = overall_lines({"clip_i": {"mean": 0.7951, "std": 0.01, "n": 3},
                           "multi_sim": {"mean": 1.5, "std": 0.2, "n": 3}},
                          Display(frozenset({"clip_i"})))
    assert lines == ["  CLIP-I (%)  79.51 ± 1.00", "  MultiSim    1.500 ± 0.200"]
