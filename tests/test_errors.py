"""User mistakes end in one line and exit 2 (``ldm_ext/cli.py``), checked before any model
loads: every command line run as a user runs it (``tests/cli_mistakes.py``), eval.py
--images folders, generation inputs, run folders, devices. No model is built here (scorers,
detectors and methods are stand-ins; fit's face check runs MTCNN on a photo)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm_ext.evaluation import cli as evaluate
from cli_mistakes import MISTAKES, SEFI_TINY, run_mistake, user_env, write_inputs
from ldm_ext.cli import InputError, UserError, run_cli
from ldm_ext.face.types import Faces
from ldm_ext.methods.instantfamily_config import InstantFamilyConfig
from ldm_ext.pipelines.instantfamily import InstantFamilyPipeline
from ldm_ext.pipelines.options import add_flags, check, from_args
from ldm_ext.perception.pose import pose_template, save_people
from ldm_ext.perception.pose.files import load_pose

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "eval" / "tiny.yaml")


# ----- the shared error path --------------------------------------------------------------
def test_user_error_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise InputError("photo.png: no such file\nsecond line")

    assert run_cli(main, [], prog="tool") == 2
    assert capsys.readouterr().err == "tool: error: photo.png: no such file; second line\n"


def test_internal_error_keeps_its_traceback():
    def main(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_cli(main, [])


def test_run_folder_mistakes_are_user_errors(tmp_path, capsys):
    from ldm_ext import export, generate

    missing = str(tmp_path / "no_run")
    assert run_cli(generate.main, ["--run", missing, "--prompt", "x"]) == 2
    assert run_cli(export.main, ["--run", missing, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(missing in line for line in err)


# ----- every command line, as the user runs it ----------------------------------------------
@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_mistake_is_one_line_exit_2_and_leaves_nothing(case, tmp_path):
    """A fresh process in its own folder, without CUDA or cloud credentials: exit 2, one
    stderr line naming the flag or file, and no file or folder made (``runs/``,
    ``results/``, an output folder)."""
    work = tmp_path / "work"
    work.mkdir()
    write_inputs(work)
    before = sorted(work.rglob("*"))
    mistake = MISTAKES[case]
    result = run_mistake(mistake, work, user_env(tmp_path))
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].strip(), result.stderr[-2000:]
    assert all(word in lines[0] for word in mistake.words), lines[0]
    assert sorted(work.rglob("*")) == before


# ----- devices, asked before anything heavy ---------------------------------------------
@pytest.mark.parametrize("visible, nodes, hidden", [
    ("", ["/dev/nvidia0"], True), ("-1", ["/dev/nvidia0"], True), ("-1,0", ["/dev/nvidia0"], True),
    ("0", [], True), (None, [], True), ("0", ["/dev/nvidia0"], False), (None, ["/dev/dxg"], False),
])
def test_a_machine_without_a_gpu_is_told_without_torch(monkeypatch, visible, nodes, hidden):
    from ldm_ext import devices

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(devices.sys, "platform", "linux")
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: [n for n in nodes if
                                                               n.startswith(pattern[:9])])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert devices.gpu_hidden() is hidden
    assert devices.cuda_device_count() == (0 if hidden else 3)


def test_fewer_gpus_than_devices_is_named(monkeypatch):
    from ldm_ext import devices
    from ldm_ext.config import ConfigError, load_config
    from ldm_ext.training_checks import check_trainer

    monkeypatch.setattr(devices, "cuda_device_count", lambda: 2)
    cfg = load_config(str(Path(SEFI_TINY).parent / "demo.yaml"), ["trainer=ddp"])
    with pytest.raises(ConfigError, match=r"devices=8 needs 8 CUDA GPU\(s\) and 2 are visible"):
        check_trainer(cfg)
    cfg.trainer.devices = 2
    check_trainer(cfg)


# ----- fit: a photo without a face ------------------------------------------------------
def test_a_photo_without_a_face_is_fitted_with_a_warning(tmp_path, monkeypatch, capsys):
    """SeFi-IDE's face-wise loss needs no detected face, so the fit goes on; the user is
    told that MTCNN found none (ldm_ext/fit.py)."""
    import skimage.data

    from ldm_ext import fit, training

    grey, face = tmp_path / "grey.png", tmp_path / "face.png"
    Image.new("RGB", (128, 128), "gray").save(grey)
    Image.fromarray(skimage.data.astronaut()[0:300, 80:380]).save(face)
    assert fit.no_face_warning(face) is None
    fitted = []
    monkeypatch.setattr(training, "run", lambda cfg: fitted.append(cfg.name) or tmp_path / "grey")
    fit.fit_identity(fit.fit_config(SEFI_TINY, grey, "grey", output_dir=tmp_path / "runs"))
    err = capsys.readouterr().err
    assert fitted == ["grey"]
    assert f"grey: warning: no face found in {grey}" in err and "face-wise" in err


# ----- eval.py --images -------------------------------------------------------------------
@pytest.fixture
def refs(tmp_path) -> Path:
    """Subjects a and b: one small photo each and their class words."""
    root = tmp_path / "refs"
    for sid in "ab":
        (root / sid).mkdir(parents=True)
        Image.new("RGB", (32, 32), "gray").save(root / sid / "0.png")
    (root / "classes.txt").write_text("a man\nb woman\n")
    return root


@pytest.fixture
def fake_scoring(monkeypatch):
    """Stand-in scorers: every readable image scores identity 0.5; building them is
    recorded, so a test can tell that a mistake was found before any model loaded."""
    import ldm_ext.evaluation.scoring as scoring

    built = []

    def score(scorers, images, records, refs):
        assert all(image.ndim == 3 for image in images)
        rows = [{**r, "faces": 1, "identity": 0.5} for r in records]
        return rows, [np.eye(len(r["subjects"])) for r in records]

    monkeypatch.setattr(scoring, "build_scorers", lambda cfg, device: built.append(1))
    monkeypatch.setattr(scoring, "embed_references", lambda scorers, photos: None)
    monkeypatch.setattr(scoring, "score_images", score)
    return built


def images_args(folder: Path, refs: Path, out: Path) -> list[str]:
    return ["--config", TINY, "--images", str(folder), "--references", str(refs),
            f"output_dir={out}", "prompts.set=fastcomposer_single"]


def test_unreadable_image_is_skipped_and_listed(tmp_path, refs, fake_scoring, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "a__p00__0.png")
    Image.new("RGB", (32, 32), "blue").save(folder / "b__p01__0.png")
    whole = (folder / "b__p01__0.png").read_bytes()
    (folder / "b__p01__0.png").write_bytes(whole[: len(whole) // 2])  # truncated PNG
    assert evaluate.main(images_args(folder, refs, tmp_path / "out")) == 0
    summary = json.loads((tmp_path / "out" / "imgs" / "summary.json").read_text())
    assert summary["num_images"] == 1
    assert [s["file"] for s in summary["skipped"]] == ["b__p01__0.png"]
    report = (tmp_path / "out" / "imgs" / "report.md").read_text()
    assert "## Skipped images (1)" in report and "b__p01__0.png" in report
    assert "1 unreadable skipped" in capsys.readouterr().out


def test_nothing_readable_is_refused(tmp_path, refs, fake_scoring, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a__p00__0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert evaluate.main(images_args(folder, refs, tmp_path / "out")) == 2
    assert "none of its 1 images could be read" in capsys.readouterr().err


@pytest.mark.parametrize("names, words", [
    ([], ["no images to score"]),
    (["a__p00__0.png", "holiday.png"], ["holiday.png", "named outside"]),
    (["a__p99__0.png"], ["a__p99__0.png", "prompt index 99"]),
    (["a+bob__p00__0.png"], ["a+bob__p00__0.png", "bob", "references"]),
])
def test_folder_mistakes_are_refused_before_models(tmp_path, refs, fake_scoring, capsys,
                                                   names, words):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in names:
        Image.new("RGB", (32, 32), "red").save(folder / name)
    assert evaluate.main(images_args(folder, refs, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not fake_scoring and not (tmp_path / "out" / "imgs").exists()


def test_bad_manifest_line_is_named(tmp_path, refs, fake_scoring, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "manifest.jsonl").write_text('{"file": "x.png", "subjects": ["a"]}\n{oops\n')
    assert evaluate.main(images_args(folder, refs, tmp_path / "out")) == 2
    assert "manifest.jsonl line 2: not JSON" in capsys.readouterr().err


# ----- generation inputs ------------------------------------------------------------------
class CountingDetector:
    """Finds ``n`` faces in any photo."""

    def __init__(self, n: int) -> None:
        self.n = n

    def detect(self, image: np.ndarray) -> Faces:
        return Faces(np.tile([0, 0, 8, 8], (self.n, 1)), np.zeros((self.n, 5, 2)),
                     np.ones(self.n), torch.zeros(self.n, 3, 16, 16))


def pipeline(faces: int) -> InstantFamilyPipeline:
    """The InstantFamily pipeline's argument handling around a stand-in method."""
    from diffusers import DDPMScheduler

    method = SimpleNamespace(backbone=SimpleNamespace(scheduler=DDPMScheduler()),
                             cfg=OmegaConf.create({"data": {"resolution": 64}}))
    return InstantFamilyPipeline(method, detector=CountingDetector(faces))


INPUTS = InstantFamilyConfig.GENERATION_INPUTS


def parse(argv: list[str]) -> dict:
    """InstantFamily's generation inputs from generate's flags, by name."""
    from ldm_ext.generate import common_parser

    parser = common_parser(add_help=True)
    add_flags(parser, INPUTS)
    return from_args(parser.parse_args(["--run", "r", "--prompt", "p", *argv]), INPUTS)


def inputs(pipe: InstantFamilyPipeline, values: dict, size=None) -> dict:
    """What generation does with the values: the checks before loading, then the
    pipeline's own (faces, pose contents)."""
    check(values, INPUTS, pipe.method.cfg)
    return pipe.inputs(values, size)


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), "white").save(path)
    return path


def test_good_inputs_pass(photo, tmp_path):
    pose = tmp_path / "pose.json"
    save_people(pose_template(2, (64, 96)), pose, hw=(64, 96))
    found = inputs(pipeline(6), parse(["--group", str(photo), "--num-ids", "2",
                                       "--pose", str(pose)]))
    assert found["identities"].shape[0] == 2 and found["size"] == (64, 96)


def test_size_moves_a_stored_pose_onto_the_square_image(photo, tmp_path):
    """--size with a pose JSON of another size: keypoints are fitted (scaled and centred),
    not drawn at their old pixel positions off a smaller canvas."""
    pose = tmp_path / "pose.json"
    people = pose_template(2, (64, 128))
    save_people(people, pose, hw=(64, 128))
    found = inputs(pipeline(2), parse(["--group", str(photo), "--pose", str(pose)]), (256, 256))
    assert "size" not in found  # generate's square --size stays
    moved = found["people"][1].body[:, :2]
    np.testing.assert_allclose(moved, people[1].body[:, :2] * 2 + [0, 64], atol=1e-4)


def test_pose_inputs_of_every_pipeline(tmp_path):
    """The one pose-file reader the pipelines share (StoryMaker's --pose with --size drew
    keypoints at the stored size's pixels): the stored size without --size, the keypoints
    fitted onto the square with it, the people as they are when no size is stored."""
    pipe = pipeline(2)
    people = pose_template(2, (64, 128))
    stored, bare = tmp_path / "stored.json", tmp_path / "bare.json"
    save_people(people, stored, hw=(64, 128))
    save_people(people, bare)
    assert pipe.pose_inputs(str(stored), None)["size"] == (64, 128)
    fitted = pipe.pose_inputs(str(stored), (256, 256))
    assert "size" not in fitted
    np.testing.assert_allclose(fitted["people"][1].body[:, :2],
                               people[1].body[:, :2] * 2 + [0, 64], atol=1e-4)
    as_is = pipe.pose_inputs(str(bare), (256, 256))
    assert "size" not in as_is
    np.testing.assert_allclose(as_is["people"][1].body, people[1].body)


@pytest.mark.parametrize("faces, argv, words", [
    (0, ["--ids", "{photo}"], ["identity photo", "photo.png", "no face"]),
    (1, ["--ids", "{missing}"], ["missing.png", "no such file"]),
    (1, ["--ids", "{truncated}"], ["truncated.png", "not a readable image"]),
    (0, ["--group", "{photo}"], ["group photo", "no face"]),
    (6, ["--group", "{photo}", "--num-ids", "10"], ["6 faces", "10"]),
    (1, ["--ids", "{photo}", "--num-ids", "2"], ["--num-ids goes with --group"]),
    (1, ["--ids", "{photo}", "--pose", "{missing}"], ["pose", "missing.png", "no such file"]),
    (1, ["--ids", "{photo}", "--pose", "{truncated}"], ["truncated.png", "not JSON"]),
    (1, ["--ids", "{photo}", "--pose", "{flat_pose}"], ["flat.json", "18 x [x, y, c]"]),
    (3, ["--group", "{photo}", "--pose", "{one_person}"], ["one.json", "1 people for 3"]),
])
def test_generation_input_mistakes(photo, tmp_path, faces, argv, words):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(photo.read_bytes()[:40])
    flat, one = tmp_path / "flat.json", tmp_path / "one.json"
    flat.write_text(json.dumps({"people": [{"body": [[1, 2, 1]] * 6, "face": None}]}))
    save_people(pose_template(1, (64, 64)), one)
    paths = {"photo": photo, "missing": tmp_path / "missing.png", "truncated": truncated,
             "flat_pose": flat, "one_person": one}
    values = parse([a.format(**paths) for a in argv])
    with pytest.raises(UserError) as err:
        inputs(pipeline(faces), values)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_num_ids_must_be_positive(photo):
    with pytest.raises(InputError, match="--num-ids: must be >= 1"):
        parse(["--group", str(photo), "--num-ids", "-1"])


def test_pose_json_mistakes_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    for text, words in [("{oops", "not JSON"), ("[1, 2]", "expected"),
                        ('{"people": []}', "at least one person")]:
        bad.write_text(text)
        with pytest.raises(InputError, match=words) as err:
            load_pose(bad)
        assert str(bad) in str(err.value)
