"""Faults: a fit killed mid-way resumes to exactly the weights of an uninterrupted one; a
crash while saving never leaves ``trainable.safetensors`` ahead of (or apart from) the
checkpoint; a rerun after a kill overwrites the dead run's step files (no ``-v1`` twins)."""
from __future__ import annotations

from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import train
from ldm_ext import fit
from ldm_ext.methods.sefi_ide import SeFiIDE

TINY = "configs/experiment/sefi_ide_tiny.yaml"
FAST = ["trainer.progress_bar=false", "trainer.checkpoint_every=2", "method.sample_steps=1",
        "trainer.log_every=1"]
pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands in for SIGKILL / preemption: the process ends at that point."""


def kill_at(monkeypatch, cls, step: int) -> None:
    """The training step ``step`` of ``cls`` dies before its optimizer step."""
    real = cls.model_step

    def dying(self, batch, generator):
        if self.global_step == step:
            raise Killed(f"killed at step {step}")
        return real(self, batch, generator)

    monkeypatch.setattr(cls, "model_step", dying)


def step_of(path: Path) -> int:
    with safe_open(str(path), "pt") as handle:
        return int(handle.metadata()["global_step"])


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "alice.png"
    Image.fromarray(skimage.data.astronaut()[0:300, 80:380]).save(path)
    return path


def fit_args(photo: Path, out: Path, name: str, steps: int, *extra: str) -> list[str]:
    return ["--config", TINY, "--photo", str(photo), "--name", name, f"output_dir={out}",
            f"trainer.max_steps={steps}", *FAST, *extra]


@pytest.mark.parametrize("extra", [[], ["data.batch_size=2", "data.num_workers=2"]],
                         ids=["1x0", "2x2workers"])
def test_killed_fit_resumes_bit_exactly(photo, tmp_path, monkeypatch, extra):
    """Killed during step 3 (last checkpoint: step 2), rerun to 6: the same weights, bit
    for bit, as 6 steps in one go; the augmented views continue where the dead run's
    checkpoint left them, also with DataLoader workers."""
    assert fit.main(fit_args(photo, tmp_path, "straight", 6, *extra)) == 0
    with monkeypatch.context() as patch:
        kill_at(patch, SeFiIDE, 3)
        with pytest.raises(Killed):
            fit.main(fit_args(photo, tmp_path, "killed", 6, *extra))
    assert step_of(tmp_path / "killed" / "trainable.safetensors") == 2
    assert fit.main(fit_args(photo, tmp_path, "killed", 6, *extra)) == 0
    a = load_file(tmp_path / "straight" / "trainable.safetensors")
    b = load_file(tmp_path / "killed" / "trainable.safetensors")
    assert a.keys() == b.keys() and step_of(tmp_path / "killed" / "trainable.safetensors") == 6
    for key in a:
        assert torch.equal(a[key], b[key]), key
