"""Pose files in the formats people have (OpenPose BODY_25 / COCO-18, controlnet_aux's,
idforge's) read into one pose; OpenPose annotator weights named by --pose-weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm_ext.cli import InputError, run_cli
from ldm_ext.perception.pose import (PoseModelMissing, pose_template, render_control_image,
                                     save_people)
from ldm_ext.perception.pose.files import BODY_25_TO_COCO_18, load_pose

ROOT = Path(__file__).resolve().parent.parent
HW = (240, 320)


def _flat(points: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(points).reshape(-1)]


def _body_25(body: np.ndarray) -> np.ndarray:
    """(25, 3) BODY_25 of an (18, 3) COCO-18 body: MidHip between the hips, feet below
    the ankles (points the COCO drawing has no place for)."""
    out = np.zeros((25, 3), np.float32)
    out[list(BODY_25_TO_COCO_18)] = body
    out[8] = (body[8] + body[11]) / 2
    out[19:22] = body[13] + [5, 8, 0]  # left big toe, small toe, heel
    out[22:25] = body[10] + [-5, 8, 0]
    return out


def _people() -> list:
    """Two people with faces, one point of each missing."""
    people = pose_template(2, HW)
    for person in people:
        person.body[4] = 0  # right wrist missing
        person.face[5] = 0
    return people


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def _openpose(people, body_25: bool, canvas: bool) -> dict:
    """OpenPose's --write_json layout (hands present, as OpenPose writes them)."""
    data = {"version": 1.3, "people": [
        {"person_id": [-1], "pose_keypoints_2d": _flat(_body_25(p.body) if body_25 else p.body),
         "face_keypoints_2d": _flat(p.face), "hand_left_keypoints_2d": [0.0] * 63,
         "hand_right_keypoints_2d": [0.0] * 63} for p in people]}
    if canvas:
        data.update(canvas_width=HW[1], canvas_height=HW[0])
    return data


def _draw(people) -> np.ndarray:
    return render_control_image(people, HW, [None] * len(people))


def test_body_25_and_coco_18_give_the_same_pose_and_control_image(tmp_path):
    people = _people()
    ours = tmp_path / "ours.json"
    save_people(people, ours, hw=HW)
    coco = _write(tmp_path / "coco.json", _openpose(people, body_25=False, canvas=True))
    body_25 = _write(tmp_path / "body25.json", _openpose(people, body_25=True, canvas=True))
    expected = _draw(load_pose(ours).people)
    assert (expected > 0).any()
    for path in (coco, body_25):
        pose = load_pose(path)
        assert pose.hw == HW and pose.stored_size and len(pose.people) == 2
        for got, person in zip(pose.people, people):
            np.testing.assert_array_equal(got.body, person.body)
            np.testing.assert_array_equal(got.face, person.face)
        assert np.array_equal(_draw(pose.people), expected)


def test_controlnet_aux_json_draws_as_controlnet_aux_draws_it(tmp_path):
    """controlnet_aux's pose JSON (encode_poses_as_dict: coordinates / canvas size,
    missing body points [0, 0, 0], face points not found at x, y = -1 / size with
    confidence 1): our control image equals controlnet_aux's drawing of those poses."""
    from controlnet_aux.open_pose import PoseResult, draw_poses
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    rng = np.random.default_rng(0)
    height, width = HW
    poses = []
    for _ in range(2):
        xy = rng.uniform(0.05, 0.95, (88, 2))
        body = [Keypoint(x, y) if rng.random() > 0.2 else None for x, y in xy[:18]]
        face = [Keypoint(x, y) if rng.random() > 0.2 else Keypoint(-1 / width, -1 / height)
                for x, y in xy[18:]]
        poses.append(PoseResult(BodyResult(body, 1.0, 18), None, None, face))

    def encode(points):
        return [v for p in points for v in ((p.x, p.y, 1.0) if p is not None else (0, 0, 0))]

    path = _write(tmp_path / "aux.json", {
        "people": [{"pose_keypoints_2d": encode(p.body.keypoints),
                    "face_keypoints_2d": encode(p.face), "hand_left_keypoints_2d": None,
                    "hand_right_keypoints_2d": None} for p in poses],
        "canvas_height": height, "canvas_width": width})
    pose = load_pose(path)
    assert pose.hw == HW and pose.stored_size
    assert (pose.people[0].face[:, 2] == [p.x >= 0 for p in poses[0].face]).all()
    reference = draw_poses(poses, height, width, draw_body=True, draw_hand=False, draw_face=True)
    assert np.array_equal(_draw(pose.people), reference)


def test_openpose_json_without_canvas_is_framed_by_its_keypoints(tmp_path):
    """OpenPose's own JSON stores no image size: the frame is the keypoints' box plus 10 %
    of its longer side around it, fitted onto the generated square; no size is fixed."""
    from test_errors import pipeline

    people = [pose_template(1, (400, 400))[0]]
    for person in people:  # pixels of a big photo, far from its origin
        person.body[:, :2] += [900, 300]
        person.face[:, :2] += [900, 300]
    path = _write(tmp_path / "op.json", _openpose(people, body_25=True, canvas=False))
    pose = load_pose(path)
    assert not pose.stored_size
    present = np.concatenate([p[p[:, 2] > 0, :2] for p in (people[0].body, people[0].face)])
    lo, hi = present.min(0), present.max(0)
    margin = 0.1 * (hi - lo).max()
    assert pose.hw == tuple(int(np.ceil(v)) for v in (hi - lo + 2 * margin)[::-1])
    np.testing.assert_allclose(pose.people[0].body[1, :2], people[0].body[1, :2] - lo + margin,
                               atol=1e-3)
    inputs = pipeline(1).pose_inputs(str(path), None)  # the stand-in's resolution: 64
    assert "size" not in inputs
    fitted = np.concatenate([p[p[:, 2] > 0, :2] for p in (inputs["people"][0].body,
                                                           inputs["people"][0].face)])
    scale = 64 / max(pose.hw)
    np.testing.assert_allclose(fitted.max(0) - fitted.min(0), (hi - lo) * scale, rtol=1e-4)
    np.testing.assert_allclose((fitted.max(0) + fitted.min(0)) / 2, [32, 32], atol=0.5)


def test_dwpose_68_point_faces_get_missing_pupils(tmp_path):
    people = _people()
    data = _openpose(people, body_25=False, canvas=True)
    for record, person in zip(data["people"], people):
        record["face_keypoints_2d"] = _flat(person.face[:68])
    pose = load_pose(_write(tmp_path / "dw.json", data))
    assert (pose.people[0].face[68:] == 0).all()
    np.testing.assert_array_equal(pose.people[0].face[:68], people[0].face[:68])


@pytest.mark.parametrize("data, words", [
    ({"people": [{"pose_keypoints_2d": [1.0, 2.0, 1.0] * 15}]}, ["15 body keypoints"]),
    ({"people": [{"pose_keypoints_2d": [5.0, 2.0, 1.0] * 18, "face_keypoints_2d": [1.0] * 9}]},
     ["3 face keypoints"]),
    ({"people": [{"pose_keypoints_2d": [0.5, 0.2, 1.0] * 18}]}, ["canvas_width"]),
    ({"people": [{"pose_keypoints_2d": [0.0, 0.0, 0.0] * 18}]}, ["confidence above 0"]),
    ({"people": [{"keypoints": [1, 2, 1]}]}, ["KeyError"]),
    ({"bodies": [{"joints": [1, 2, 1]}]}, ["KeyError"]),
    ([[1, 2, 1]], ["TypeError"]),
])
def test_other_layouts_are_one_line_naming_the_three_formats(tmp_path, capsys, data, words):
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(InputError) as err:
        load_pose(path)
    message = str(err.value)
    for expected in (str(path), "OpenPose JSON", "BODY_25", "controlnet_aux", "idforge",
                     *words):
        assert expected in message, message
    assert run_cli(lambda argv: load_pose(path), [], prog="generate") == 2
    assert capsys.readouterr().err.count("\n") == 1


# ----- OpenPose weights -------------------------------------------------------------------
def test_missing_weights_name_the_download_command(tmp_path):
    from ldm_ext.perception.annotator import Annotator

    with pytest.raises(PoseModelMissing) as err:
        Annotator(pose="openpose", pose_weights=str(tmp_path)).pose_estimator()
    assert (f"hf download lllyasviel/Annotators body_pose_model.pth hand_pose_model.pth "
            f"facenet.pth --local-dir {tmp_path}") in str(err.value)
    with pytest.raises(PoseModelMissing, match="--pose-weights DIR"):
        Annotator(pose="openpose", pose_weights=str(tmp_path / "none")).pose_estimator()


def test_annotator_builds_openpose_from_its_pose_weights_folder(tmp_path):
    from ldm_ext.perception.annotator import Annotator
    from ldm_ext.perception.pose import OpenPoseEstimator
    from test_pose import _save_openpose_weights

    _save_openpose_weights(tmp_path)
    assert isinstance(Annotator(pose="openpose", pose_weights=str(tmp_path)).pose_estimator(),
                      OpenPoseEstimator)


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory) -> Path:
    """A tiny InstantFamily run folder (config + initial trainable weights), no training."""
    from ldm_ext import training
    from ldm_ext.config import load_config
    from ldm_ext.methods.loading import build_method

    cfg = load_config(ROOT / "configs" / "experiment" / "demo.yaml",
                      [f"output_dir={tmp_path_factory.mktemp('runs')}", "name=untrained"])
    run_dir, _ = training.prepare_run_dir(cfg)
    build_method(cfg).save_trainable(run_dir / "trainable.safetensors")
    return run_dir


def test_pose_image_without_weights_is_one_line_exit_2(untrained_run, tmp_path):
    """--pose-image with an empty --pose-weights folder: one line naming the download
    command, exit 2 (it was a 65-line traceback, exit 1)."""
    from skimage.data import astronaut

    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    empty = tmp_path / "annotators"
    empty.mkdir()
    cmd = [sys.executable, "-m", "ldm_ext.generate", "--run", str(untrained_run), "--ids",
           str(photo), "--pose-image", str(photo), "--pose-weights", str(empty), "--prompt",
           "an astronaut", "--steps", "1", "--out", str(tmp_path / "out.png")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"--local-dir {empty}" in errors[0] and "hf download lllyasviel/Annotators" in errors[0]
    assert not (tmp_path / "out.png").exists()
