"""The StoryMaker demo end to end, offline on the tiny setup: train.py on the demo shards'
characters (masks and crops), generate with characters from photos (segmented, or with the
official mask input) and a group photo, eval.py on StoryMaker's protocol (Face Sim, CLIP-T,
CLIP-I, the paper's figures beside), scores meaningless (random weights)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_ext.evaluation import cli as evaluate
from ldm_ext.evaluation.subjects import write_demo_subjects
from ldm_ext.cli import InputError
from ldm_ext.generate import main as generate
from ldm_ext.methods.loading import load_run

TINY_SCORING = ["scoring.face_sim_detector=mtcnn", "scoring.face_sim_encoder=arcface",
                "scoring.face_sim_weights=random", "scoring.face_weights=random",
                "scoring.clip_t_model=idforge-tiny-clip", "scoring.clip_t_pretrained=random",
                "scoring.clip_i_model=idforge-tiny-clip", "scoring.clip_i_pretrained=random"]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def run(storymaker_run: Path) -> Path:
    """The demo trained 2 steps at 64 px (tests/tiny_runs.py), once per session."""
    return storymaker_run


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> Path:
    return write_demo_subjects(tmp_path_factory.mktemp("subjects"))


def test_demo_trains_with_attention_loss_grids_and_evaluation(run: Path):
    assert (run / "trainable.safetensors").is_file()
    assert [p.name for p in (run / "samples").glob("*.png")] == ["step_0000002.png"]
    rows = (run / "eval" / "eval.csv").read_text().splitlines()
    assert rows[1].startswith("2,") and (run / "eval" / "attention_step_0000002.png").is_file()
    header = next((run / "csv").glob("version_*/metrics.csv")).read_text().splitlines()[0]
    assert {"train/attn", "train/noise", "train/loss"} <= set(header.split(","))
    method = load_run(run)
    assert set(method.trainable_modules()) == {"ppr", "ip_kv", "lora"}


def test_generate_from_photos_masks_and_a_group(run: Path, subjects: Path, tmp_path):
    photos = [str(subjects / sid / "0.png") for sid in ("astronaut", "t1_0")]
    mask = np.zeros(Image.open(photos[0]).size[::-1], np.uint8)
    mask[50:400, 100:400] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["--run", str(run), "--size", "64", "--steps", "2"]
    [two] = generate([*common, "--ids", *photos, "--masks", str(tmp_path / "mask.png"),
                      str(tmp_path / "mask.png"), "--prompt", "two people on a beach",
                      "--out", str(tmp_path / "two.png")])
    [group] = generate([*common, "--group", photos[1], "--num-ids", "1", "--zero-character",
                        "--prompt", "a watercolor painting of a person",
                        "--out", str(tmp_path / "group.png")])
    assert Image.open(two).size == Image.open(group).size == (64, 64)


def test_pipeline_character_crops_and_limits(run: Path, subjects: Path):
    pipe = load_run(run).pipeline()
    photo = Image.open(subjects / "astronaut" / "0.png")
    identity = pipe.identity(photo)
    assert identity.shape == (6, 224, 224) and -1 <= identity.min() < identity.max() <= 1
    empty = pipe.identity(photo, mask=np.zeros(photo.size[::-1], bool))
    assert torch.all(empty[3:] == 1)  # no character pixels: white (official crop)
    with pytest.raises(InputError, match="at most 3"):
        pipe("people", identity[None].expand(4, -1, -1, -1), size=(64, 64), steps=1)
    with pytest.raises(InputError, match="no ControlNet"):
        pipe("people", identity[None], size=(64, 64), steps=1, people=[])


def test_eval_runs_the_storymaker_protocol_on_the_tiny_run(run: Path, tmp_path):
    args = ["--config", "configs/eval/storymaker.yaml", "--checkpoint", str(run),
            f"output_dir={tmp_path}", "subjects.root=demo", "subjects.ids=[astronaut]",
            "prompts.limit=2", "generation.images_per_prompt=1", "generation.size=64",
            "generation.steps=2", "generation.device=cpu", *TINY_SCORING]
    assert evaluate.main(args) == 0
    out = tmp_path / "storymaker"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 2
    assert {"face_sim", "clip_t", "clip_i"} <= set(summary["overall"])
    assert summary["config"]["generation"]["sampler"] == "unipc"
    report = (out / "report.md").read_text()
    assert "## Published figures" in report and "| StoryMaker(Ours) | 67.36 |" in report


def test_a_trained_run_loads_without_its_training_only_files(run: Path, tmp_path):
    """The released checkpoints a run started from (faceid/plus/storymaker weights) only
    initialise what the run trains and saves, and the ID loss's ArcFace only scores
    training: generation from the run must need neither."""
    import shutil

    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run / "trainable.safetensors", copy)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.method.faceid_weights = str(tmp_path / "gone" / "ip-adapter-faceid-plusv2.bin")
    cfg.method.id_loss_weight = 0.5
    cfg.method.id_loss_weights = str(tmp_path / "gone" / "backbone.pth")
    OmegaConf.save(cfg, copy / "config.yaml")
    method = load_run(copy)
    assert method.cfg.method.id_loss_weight == 0
    saved = load_file(copy / "trainable.safetensors")
    for name, param in method.trainable_parameters().items():
        torch.testing.assert_close(param.detach(), saved[name])
