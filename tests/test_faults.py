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

from ldm_ext import fit, training
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


# ----- crashes while saving (disk full), and the rerun after them -----------------------
DEMO = ["trainer.progress_bar=false", "logger.wandb=false", "method.sample_steps=1",
        "method.sample_num_ids=[1]", "data.num_demo_samples=8", "trainer.log_every=1"]


def demo_args(out: Path, name: str, steps: int, every: int) -> list[str]:
    return [f"output_dir={out}", f"name={name}", f"trainer.max_steps={steps}",
            f"trainer.checkpoint_every={every}", *DEMO]


def disk_full_at(monkeypatch, step: int, file: str | None = None) -> None:
    """Writing a checkpoint at ``step`` (only ``file``, if given) fails as on a full disk."""
    import errno

    from callbacks.checkpointing import AtomicCheckpointIO

    real = AtomicCheckpointIO.save_checkpoint

    def failing(self, checkpoint, path, storage_options=None):
        if checkpoint["global_step"] == step and (file is None or Path(path).name == file):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", failing)


def ckpt(run: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def assert_agree(run: Path) -> None:
    """trainable.safetensors holds the step and the weights of last.ckpt."""
    last, trainable = ckpt(run), run / "trainable.safetensors"
    assert step_of(trainable) == last["global_step"]
    weights = load_file(trainable)
    assert weights.keys() == last["state_dict"].keys()
    for key, value in weights.items():
        assert torch.equal(value, last["state_dict"][key].float()), key


def test_disk_full_never_publishes_weights_ahead_of_the_checkpoint(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        disk_full_at(patch, 3)
        with pytest.raises(OSError, match="No space left"):
            training.main(demo_args(tmp_path, "full", 4, 1))
    run = tmp_path / "full"
    assert ckpt(run)["global_step"] == 2
    assert_agree(run)


def test_rerun_after_a_crash_overwrites_the_dead_runs_step_files(tmp_path, monkeypatch):
    """The dead run wrote step0000004.ckpt but not last.ckpt: the rerun resumes from step
    2 and writes step 4 again under its own name, no ``-v1`` twin beside it."""
    with monkeypatch.context() as patch:
        disk_full_at(patch, 4, "last.ckpt")
        with pytest.raises(OSError, match="No space left"):
            training.main(demo_args(tmp_path, "dead", 4, 2))
    run = tmp_path / "dead"
    (run / "checkpoints" / ".step0000006.ckpt.tmp").write_bytes(b"half a checkpoint")
    assert (run / "checkpoints" / "step0000004.ckpt").is_file()
    assert ckpt(run)["global_step"] == 2
    assert_agree(run)
    assert training.main(demo_args(tmp_path, "dead", 4, 2)) == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"], names
    assert ckpt(run, "step0000004.ckpt")["global_step"] == 4
    assert_agree(run)


def test_a_run_ending_between_checkpoints_saves_its_last_step(tmp_path):
    """3 steps, a checkpoint every 2: step 3 is saved too, so the finished run's
    checkpoint and its trainable weights are both its end state."""
    assert training.main(demo_args(tmp_path, "odd", 3, 2)) == 0
    run = tmp_path / "odd"
    assert ckpt(run)["global_step"] == 3 and ckpt(run, "step0000003.ckpt")["global_step"] == 3
    assert_agree(run)


def test_checkpoint_streams_to_its_file_not_through_memory(tmp_path, monkeypatch):
    """AtomicCheckpointIO hands torch.save the temporary file itself: no in-memory copy of
    the whole checkpoint (Lightning's own save buffers it, twice the RAM of its size), and
    the file still lands whole under its name with no temporary left beside it."""
    import io

    from callbacks.checkpointing import AtomicCheckpointIO

    targets, real = [], torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (targets.append(f),
                                                               real(obj, f, *a, **k))[1])
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.arange(4.0)}}, path)
    assert targets and not any(isinstance(f, io.BytesIO) for f in targets)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
