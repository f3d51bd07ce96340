"""train.py end to end on the tiny demo: outputs, resume after SIGKILL, NaN stop, DDP."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm_ext import training
from ldm_ext.methods.instantfamily import InstantFamily

ROOT = Path(__file__).resolve().parent.parent
FAST = ["trainer.progress_bar=false", "trainer.log_every=1", "logger.wandb=false", "method.sample_steps=2",
        "method.sample_num_ids=[1,2]", "data.num_demo_samples=16",
        "method.train_unet=false"]  # the paper's trainable set (ControlNet + projector)


def overrides(tmp: Path, name: str, steps: int, *extra: str) -> list[str]:
    return [f"output_dir={tmp}", f"name={name}", f"trainer.max_steps={steps}",
            "trainer.checkpoint_every=2", *FAST, *extra]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("runs")
    assert training.main(overrides(tmp, "e2e", 4, "logger.wandb=true")) == 0
    return tmp / "e2e"


def test_run_folder_has_everything(demo_run: Path):
    assert (demo_run / "config.yaml").is_file()
    assert (demo_run / "checkpoints" / "last.ckpt").is_file()
    assert (demo_run / "checkpoints" / "step0000004.ckpt").is_file()
    grid = demo_run / "samples" / "step_0000004.png"
    assert grid.is_file()
    from PIL import Image

    from ldm_ext.evaluation.grid_labels import grid_layout

    image, layout = Image.open(grid).convert("RGB"), grid_layout(grid)
    assert layout["grid"] == [2, 2] and layout["cell"] == [128, 128]  # legend + 1 prompt
    assert layout["columns"] == ["N=1", "N=2"] and layout["references"] == ["id0", "id1"]
    assert layout["rows"] == ["conditioning", "a photo of people in a park"]
    assert layout["title"] == "instantfamily · seed 0 · step 4"
    from ldm_ext.perception.pose import SLOT_COLORS

    side = 128 // 5  # legend: identity k framed in slot colour k along the bottom edge
    x, y = layout["origin"]
    assert image.getpixel((x + 2, y + 128 - side - 6)) == SLOT_COLORS[0]
    assert image.getpixel((x + 128 + 2 + side + 6, y + 128 - side - 6)) == SLOT_COLORS[1]
    metrics = (demo_run / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics
    assert list((demo_run / "wandb").glob("offline-run-*")), "wandb offline run missing"


def test_only_trainable_weights_are_saved(demo_run: Path):
    weights = load_file(demo_run / "trainable.safetensors")
    assert weights and all(k.split(".")[0] in {"controlnet", "face_projector"} for k in weights)
    ckpt = torch.load(demo_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == set(weights)
    assert ckpt["global_step"] == 4


def test_changed_config_is_refused(demo_run: Path):
    tmp = demo_run.parent
    assert training.main(overrides(tmp, "e2e", 4, "method.mask_mode=hard")) == 2
    assert (demo_run / "checkpoints" / "last.ckpt").is_file()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = InstantFamily.model_step

    def poisoned(self, batch, generator):
        losses = real(self, batch, generator)
        if self.global_step == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(InstantFamily, "model_step", poisoned)
    assert training.main(overrides(tmp_path, "nan", 6)) == 3
    assert "step 3" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2


def _cmd(tmp: Path, name: str, steps: int) -> list[str]:
    return [sys.executable, "train.py", *overrides(tmp, name, steps)]


@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cmd(tmp_path, "straight", 4), cwd=ROOT, env=env, check=True,
                   capture_output=True)
    proc = subprocess.Popen(_cmd(tmp_path, "killed", 4), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "step0000002.ckpt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run never reached step 2"
    assert not (tmp_path / "killed" / "checkpoints" / "step0000004.ckpt").exists()
    subprocess.run(_cmd(tmp_path, "killed", 4), cwd=ROOT, env=env, check=True,
                   capture_output=True)
    a = load_file(tmp_path / "straight" / "trainable.safetensors")
    b = load_file(tmp_path / "killed" / "trainable.safetensors")
    assert a.keys() == b.keys()
    # One AdamW step moves a weight by ~lr = 1e-4, so any replayed or skipped sample or
    # noise draw shows up far above 1e-5; below it is CPU float reordering (~1e-6 seen).
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """Training and the evaluation callback under DDP: rank 0 evaluates and writes once,
    rank 1 waits at the barrier, both finish."""
    cmd = [*_cmd(tmp_path, "ddp", 2), "trainer.strategy=ddp", "trainer.devices=2",
           "trainer.accelerator=cpu", "data.num_demo_samples=32",  # one shard per rank
           "trainer.eval_every=2", "method.sample_steps=2"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert (tmp_path / "ddp" / "trainable.safetensors").is_file()
    rows = (tmp_path / "ddp" / "eval" / "eval.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("2,")  # header + step 2, written once
    assert (tmp_path / "ddp" / "eval" / "attention_step_0000002.png").is_file()


def test_generation_cli_from_run(demo_run: Path, tmp_path):
    import insightface

    from ldm_ext.generate import main as generate

    group = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    [out] = generate(["--run", str(demo_run), "--group", str(group), "--num-ids", "5",
                      "--prompt", "a photo of five friends", "--steps", "2",
                      "--out", str(tmp_path / "five.png")])
    from PIL import Image

    assert Image.open(out).size == (128, 128)


def test_corrupt_shard_is_skipped_counted_and_logged(tmp_path):
    from datamodules.demo import write_demo_shards

    shards = tmp_path / "shards"
    write_demo_shards(shards, num_samples=8, size=128, samples_per_shard=4)
    (shards / "demo-99999.tar").write_bytes(b"this is not a tar archive" * 40)
    assert training.main(overrides(tmp_path, "corrupt", 2, "data.kind=shards",
                                   f"data.shards={shards}/*.tar")) == 0
    metrics = (tmp_path / "corrupt" / "csv" / "version_0" / "metrics.csv").read_text()
    assert "data/skipped/" in metrics


def test_generation_cli_with_pose_json(demo_run: Path, tmp_path):
    from skimage.data import astronaut

    from ldm_ext.generate import main as generate
    from ldm_ext.perception.pose import pose_template, save_people

    from PIL import Image

    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    pose = tmp_path / "pose.json"
    save_people(pose_template(3, (128, 192)), pose, hw=(128, 192))
    [out] = generate(["--run", str(demo_run), "--ids", str(photo), str(photo),
                      "--pose", str(pose), "--prompt", "two astronauts", "--steps", "2",
                      "--out", str(tmp_path / "pose.png")])
    assert Image.open(out).size == (192, 128)


def test_lightning_checkpoint_loads_as_trainable_weights(demo_run: Path):
    from ldm_ext.methods.loading import load_run

    method = load_run(demo_run, weights=demo_run / "checkpoints" / "last.ckpt")
    saved = load_file(demo_run / "trainable.safetensors")  # both written at step 4
    for name, param in method.trainable_parameters().items():
        torch.testing.assert_close(param.detach(), saved[name])


def test_export_loads_in_diffusers_and_back(demo_run: Path, tmp_path):
    """The ControlNet folder loads as the card says; the card carries the run's last sample
    grid, Hub front matter and no path of the run; idforge loads the folder back."""
    import json

    from diffusers import ControlNetModel
    from huggingface_hub import ModelCard

    from ldm_ext.export import main as export
    from ldm_ext.methods.loading import load_run

    folder = export(["--run", str(demo_run), "--out", str(tmp_path / "export")])
    index = json.loads((folder / "export.json").read_text())
    assert index["modules"] == {"controlnet": "diffusers", "face_projector": "adapters"}
    assert index["files"] == []  # no LoRA, no released layout
    saved = load_file(demo_run / "trainable.safetensors")
    controlnet = ControlNetModel.from_pretrained(folder, subfolder="controlnet")
    for name, value in controlnet.state_dict().items():
        torch.testing.assert_close(value, saved[f"controlnet.{name}"])
    method = load_run(folder)
    for name, param in method.trainable_parameters().items():
        torch.testing.assert_close(param.detach(), saved[name])
    text = (folder / "README.md").read_text()
    card = ModelCard(text).data.to_dict()
    assert {"idforge", "instantfamily"} <= set(card["tags"]) and card["license"] == "other"
    assert (folder / "sample.png").read_bytes() == (
        demo_run / "samples" / "step_0000004.png").read_bytes()
    assert 'ControlNetModel.from_pretrained("export", subfolder="controlnet")' in text
    assert "masked cross-attention" in text and str(demo_run.parent) not in text
