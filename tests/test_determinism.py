"""Scores are a function of the images and generation of its inputs: every random
initialisation a scorer or a loaded run depends on is seeded, so two processes agree to
the byte (ldm_ext/seeding.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import skimage.data
import torch
from PIL import Image

from ldm_ext.evaluation.subjects import write_demo_subjects
from ldm_ext.seeding import seeded

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "eval" / "tiny.yaml")


def run_twice(*commands: list[str]) -> None:
    """Run the commands side by side, each in its own Python process; all must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, *c], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for c in commands]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]


def test_seeded_leaves_the_callers_random_state():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with seeded(7):
        inside = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    with seeded(7):
        assert torch.equal(torch.rand(4), inside)


def test_scoring_in_two_processes_gives_identical_metrics(tmp_path):
    """The tiny config's random-init FaceNet and CLIP are drawn from scoring.seed."""
    refs = write_demo_subjects(tmp_path / "refs")
    folder = tmp_path / "images"
    folder.mkdir()
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut).resize((160, 160)).save(folder / "astronaut__p00__0.png")
    Image.open(refs / "t1_0" / "0.png").save(folder / "t1_0__p01__0.png")
    common = ["eval.py", "--images", str(folder), "--references", str(refs), "--config", TINY,
              f"output_dir={tmp_path}", "scoring.second_encoder=null",
              "scoring.clip_i_model=null"]
    run_twice(common + ["name=a"], common + ["name=b"])
    first, second = ((tmp_path / n / "metrics.csv").read_text() for n in ("a", "b"))
    assert first == second and "clip_t" in first.splitlines()[0]


def test_generation_in_two_processes_writes_identical_pngs(tiny_run, tmp_path):
    """The demo run's random-init FaceNet is drawn from the run's seed at every load."""
    photo = write_demo_subjects(tmp_path / "refs") / "astronaut" / "0.png"
    common = ["-m", "ldm_ext.generate", "--run", str(tiny_run), "--ids", str(photo),
              "--prompt", "a photo of a woman", "--steps", "2", "--size", "64", "--seed", "1"]
    outs = [tmp_path / "one.png", tmp_path / "two.png"]
    run_twice(*(common + ["--out", str(out)] for out in outs))
    assert outs[0].read_bytes() == outs[1].read_bytes()
