"""eval.py end to end on a tiny trained run, --images mode on real photos, the eval
configs, and the training-time evaluation callback (trainer.eval_every)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import insightface
import numpy as np
import pytest
import skimage.data
from PIL import Image

from ldm_ext.evaluation import cli as evaluate
from ldm_ext.evaluation import prompts
from ldm_ext.evaluation import subjects as subject_plan
from ldm_ext.evaluation.grid_labels import grid_layout
from ldm_ext.evaluation.prompts import prompt_list
from ldm_ext.config import ConfigError
from ldm_ext.eval_config import load_eval_config

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "eval" / "tiny.yaml")
T1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_configs_load_and_errors_name_key_and_file(tmp_path):
    for name in ("fastcomposer_single", "fastcomposer_multi", "storymaker", "sefi_ide", "tiny"):
        cfg = load_eval_config(ROOT / "configs" / "eval" / f"{name}.yaml")
        assert cfg.name == name
    assert load_eval_config(TINY, ["generation.steps=3"]).generation.steps == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsubjects: {root: r}\ngeneration: {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*generation.stepz"):
        load_eval_config(bad)
    with pytest.raises(ConfigError, match="prompts.set"):
        load_eval_config(TINY, ["prompts.set=nope"])
    with pytest.raises(ConfigError, match="scoring.second_encoder"):
        load_eval_config(TINY, ["scoring.second_encoder=vgg"])
    with pytest.raises(ConfigError, match="subjects.root"):
        load_eval_config(None, ["name=x"])


def test_prompt_sets_are_data(tmp_path, monkeypatch):
    """The protocols' prompt sets come from configs/prompts.yaml: StoryMaker's is
    FastComposer's first 20 single prompts; a set added to the table is a valid
    ``prompts.set`` and plans its prompts with no code naming it."""
    single = prompt_list("fastcomposer_single")
    assert len(single) == 40 and prompt_list("storymaker") == single[:20]
    assert len(prompt_list("fastcomposer_multi")) == 21
    table = tmp_path / "prompts.yaml"
    table.write_text("mine:\n  place: ['a {s} on the moon', 'a {s} at sea']\n")
    monkeypatch.setattr(prompts, "PROMPTS", table)
    prompts.prompt_sets.cache_clear()
    try:
        cfg = load_eval_config(TINY, ["prompts.set=mine", "prompts.limit=null"])
        plan = subject_plan.plan(cfg, {"s1": {"class_word": "man"}})
        assert [r["prompt"] for r in plan] == ["a man on the moon", "a man at sea"]
        with pytest.raises(ConfigError, match=r"set='storymaker' is not one of \('mine',\)"):
            load_eval_config(TINY, ["prompts.set=storymaker"])
    finally:
        prompts.prompt_sets.cache_clear()


def test_plan_counts_and_names():
    subjects = {f"{i:06d}": {"class_word": "man" if i % 2 else "woman"} for i in range(15)}
    cfg = load_eval_config(ROOT / "configs" / "eval" / "fastcomposer_multi.yaml",
                           ["subjects.num_ids=[2]", "generation.images_per_prompt=4"])
    records = subject_plan.plan(cfg, subjects)
    assert len(records) == 105 * 21 * 4  # docs/benchmark.md: 8,820 images
    first = records[0]
    assert first["file"] == "000000+000001__p00__0.png"
    assert first["prompt"] == "a painting of a woman and a man together in the style of Banksy"
    assert subject_plan.parse_name(first["file"])["subjects"] == ["000000", "000001"]
    sampled = subject_plan.subject_groups(list(subjects), 3, 7, seed=42)
    assert len(sampled) == 7 == len(set(sampled))
    assert sampled == subject_plan.subject_groups(list(subjects), 3, 7, seed=42)


def test_multi_config_plans_two_to_five_subjects():
    subjects = {f"{i:06d}": {"class_word": "man" if i % 2 else "woman"} for i in range(15)}
    cfg = load_eval_config(ROOT / "configs" / "eval" / "fastcomposer_multi.yaml")
    records = subject_plan.plan(cfg, subjects)
    counts = {n: sum(len(r["subjects"]) == n for r in records) for n in range(1, 7)}
    assert counts == {1: 0, 2: 8820, 3: 8820, 4: 8820, 5: 8820, 6: 0}  # 105 groups per N
    assert len({r["file"] for r in records}) == len(records)
    five = next(r for r in records if len(r["subjects"]) == 5)
    words = " and a ".join(subjects[s]["class_word"] for s in five["subjects"])
    assert five["clip_prompt"] == f"a painting of a {words} together in the style of Banksy"
    assert subject_plan.parse_name(five["file"])["subjects"] == five["subjects"]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_tiny_end_to_end_and_resume(tiny_run, tmp_path):
    args = ["--config", TINY, "--checkpoint", str(tiny_run), f"output_dir={tmp_path}",
            "subjects.max_groups=1", "prompts.limit=1"]
    assert evaluate.main(args) == 0
    out = tmp_path / "tiny"
    manifest = _lines(out / "manifest.jsonl")
    assert len(manifest) == 2  # one single + one pair, one prompt, one image each
    files = [json.loads(line)["file"] for line in manifest]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 2 and set(summary["by_num_ids"]) == {"1", "2"}
    assert {"identity", "identity_second", "clip_t", "clip_i", "detect"} <= set(
        summary["overall"])
    with (out / "metrics.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    check = summary["identity_check"]  # the method's encoder from the run's config
    assert check["encoders"]["protocol"] == "mtcnn+facenet/random"
    assert check["encoders"]["second"] in ("dlib+dlib", "insightface+insightface")
    assert check["encoders"]["method"] == "facenet/random" == summary["config"]["method_encoder"]
    assert check["flagged"] and "the protocol scorer" in check["warnings"][-1]
    report = (out / "report.md").read_text()
    assert "meaningless" in report and "| all |" in report and "grids/" in report
    assert "## Identity by two encoders" in report and "| protocol |" in report
    assert "> **Warning:** the protocol scorer (mtcnn+facenet/random)" in report
    assert (out / "plots" / "by_category.png").is_file()
    # interrupt after the first image: only the second is generated again, identically
    kept, redo = out / "images" / files[0], out / "images" / files[1]
    kept_time, redo_bytes = kept.stat().st_mtime_ns, redo.read_bytes()
    (out / "manifest.jsonl").write_text(manifest[0] + "\n")
    redo.unlink()
    assert evaluate.main(args) == 0
    assert kept.stat().st_mtime_ns == kept_time
    assert redo.read_bytes() == redo_bytes
    assert len(_lines(out / "manifest.jsonl")) == 2


def test_images_mode_scores_real_photos(tmp_path):
    refs = subject_plan.write_demo_subjects(tmp_path / "refs")
    folder = tmp_path / "foreign"
    folder.mkdir()
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut[:, ::-1]).resize((384, 384)).save(folder / "astronaut__p00__0.png")
    Image.fromarray(astronaut).save(folder / "t1_0__p01__0.png")  # the wrong person
    Image.open(T1).save(folder / "t1_0+t1_1__p02__0.png")  # both people (and four more)
    args = ["--images", str(folder), "--references", str(refs), f"output_dir={tmp_path}",
            "scoring.face_encoder=dlib", "scoring.face_weights=null",
            "scoring.min_face_score=0.95", "scoring.clip_t_model=idforge-tiny-clip",
            "scoring.clip_t_pretrained=random", "scoring.batch_size=2",
            "method_encoder=facenet/vggface2"]  # by hand: --images has no run to read
    assert evaluate.main(args) == 0
    with (tmp_path / "foreign" / "metrics.csv").open() as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    right, wrong = rows["astronaut__p00__0.png"], rows["t1_0__p01__0.png"]
    assert float(right["identity"]) > float(wrong["identity"]) > 0
    assert float(right["identity_second"]) > float(wrong["identity_second"]) > 0
    pair = rows["t1_0+t1_1__p02__0.png"]
    assert int(pair["faces"]) == 6 and float(pair["detect"]) == 1.0
    assert float(pair["matched_identity"]) > float(wrong["identity"])
    assert 1.0 < float(pair["multi_sim"]) <= 2.0
    summary = json.loads((tmp_path / "foreign" / "summary.json").read_text())
    assert np.array(summary["mixing"]["2"]).shape == (2, 2)
    check = summary["identity_check"]
    assert check["encoders"]["protocol"] == "mtcnn+dlib"
    assert check["encoders"]["method"] == "facenet/vggface2" and check["n"] == 3
    assert -1 <= check["rank_corr"] <= 1
    report = (tmp_path / "foreign" / "report.md").read_text()
    assert "## Identity by two encoders" in report and "`facenet/vggface2`" in report


def test_images_mode_reads_a_manifest(tmp_path):
    cfg = load_eval_config(TINY, ["subjects.root=unused"])
    (tmp_path / "manifest.jsonl").write_text(
        json.dumps({"file": "any_name.png", "subjects": ["a", "b"], "prompt_index": 3}) + "\n")
    (record,) = subject_plan.records_from_folder(tmp_path, cfg, {"a": "man", "b": "woman"})
    assert record["file"] == "any_name.png" and record["category"] == "accessory"
    assert record["clip_prompt"] == "a man and a woman wearing a black top hat and a monocle"


def test_training_callback_logged_at_eval_every(tiny_run):
    with (tiny_run / "eval" / "eval.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["2"]
    assert "eval/identity" in rows[0] and "eval/detect" in rows[0]
    assert "eval/identity_second" in rows[0] and "eval/identity_rank_corr" in rows[0]
    (check,) = [json.loads(line) for line in _lines(tiny_run / "eval" / "identity_check.jsonl")]
    assert check["step"] == 2 and check["encoders"]["method"] == "facenet/random"
    assert check["encoders"]["second"] in ("dlib+dlib", "insightface+insightface")
    assert 0.0 <= float(rows[0]["eval/detect"]) <= 1.0
    # attention overlays: a row per image (2 prompts x N in {1, 2}) of 128 px panels:
    # image, overlay and one heat map per identity (the widest row has 2 + 2 panels)
    path = tiny_run / "eval" / "attention_step_0000002.png"
    sheet, layout = Image.open(path), grid_layout(path)
    assert layout["grid"] == [2 + 2, 4] and layout["cell"] == [128, 128]
    assert layout["columns"] == ["image", "strongest identity", "id0 share", "id1 share"]
    assert layout["rows"][1].startswith("a person and a person") and "N=2" in layout["rows"][1]
    x, y = layout["origin"]
    assert np.asarray(sheet)[y:, x + 2 * 128:].std() > 0  # heat maps are not blank


def test_eval_csv_resumed_with_more_metrics_keeps_every_value_in_its_column(tmp_path):
    """A run resumed after the metric list grew: the old rows are rewritten under the new
    header once, each value under its own name, and new rows line up with it."""
    from callbacks.evaluation import _match_header

    path = tmp_path / "eval.csv"
    path.write_text("step,eval/identity,eval/gone\n10,0.5,7\n")
    header = _match_header(path, ["step", "eval/identity", "eval/identity_second"])
    assert header == ["step", "eval/identity", "eval/identity_second", "eval/gone"]
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"step": "10", "eval/identity": "0.5", "eval/identity_second": "",
                     "eval/gone": "7"}]
    assert _match_header(path, ["step", "eval/identity"]) == header  # superset: as it is


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_results_folder_is_bound_to_what_made_it(tiny_run, portraitbooth_run, tmp_path,
                                                 capsys):
    """An InstantFamily eval binds results/tiny to its checkpoint, weights, method, config
    and code; a PortraitBooth eval under the same config, another generation setting, other
    weights at the same path or a folder without the record are refused in one line,
    nothing in the folder re-scored or rewritten."""
    args = ["--config", TINY, f"output_dir={tmp_path}", "subjects.num_ids=[1]",
            "subjects.max_groups=1", "prompts.limit=1", "scoring.second_encoder=null"]
    assert evaluate.main(["--checkpoint", str(tiny_run), *args]) == 0
    out = tmp_path / "tiny"
    made = json.loads((out / "provenance.json").read_text())
    assert made["method"] == "instantfamily" and len(made["weights_hash"]) == 64
    provenance = json.loads((out / "summary.json").read_text())["provenance"]
    assert provenance["weights_hash"] == made["weights_hash"]
    assert provenance["config_hash"] == made["config_hash"] and provenance["device"] == "cpu"
    assert provenance["code_version"] == made["code_version"] != "unknown"
    assert provenance["scorer_seeds"] == {"faces": 0, "clip_t": 0, "clip_i": 0}
    assert provenance["build_seed"] == 0 and provenance["torch"] and provenance["diffusers"]
    last = (out / "report.md").read_text().rsplit("\n## ", 1)[1]  # the closing section
    assert last.startswith("Provenance") and f"| weights sha256 | `{made['weights_hash']}` |" \
        in last and f"| checkpoint | `{tiny_run.resolve()}` |" in last
    before = _snapshot(out)
    assert evaluate.main(["--checkpoint", str(portraitbooth_run), *args]) == 2
    assert (f"{out.resolve()} was made by method instantfamily, checkpoint "
            f"{tiny_run.resolve()}; this eval: method portraitbooth, checkpoint "
            f"{portraitbooth_run.resolve()}: pick another name= (e.g. name=tiny_portraitbooth)"
            ) in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(tiny_run), *args, "generation.steps=3"]) == 2
    assert "generation.steps=2; this eval: generation.steps=3" in capsys.readouterr().err
    made["weights_hash"] = "0" * 64  # as if the run had been retrained since
    (out / "provenance.json").write_text(json.dumps(made))
    before["provenance.json"] = _snapshot(out)["provenance.json"]
    assert evaluate.main(["--checkpoint", str(tiny_run), *args]) == 2
    assert "weights sha256 000000000000; this eval: weights sha256 " in capsys.readouterr().err
    assert _snapshot(out) == before  # nothing generated, scored or written
    (out / "provenance.json").unlink()  # results from before folders were bound
    assert evaluate.main(["--checkpoint", str(tiny_run), *args]) == 2
    assert "holds results (manifest.jsonl, summary.json, metrics.csv) but no provenance.json" \
        in capsys.readouterr().err
