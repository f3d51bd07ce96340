"""Checkpoints from strangers: loading or resuming from one never runs code from it, the
refusal names the file, and our own checkpoints still load and resume weights-only."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

import train
from callbacks.checkpointing import AtomicCheckpointIO
from ldm_ext.weights import CheckpointError, read_state


class Payload:
    """Unpickling this creates ``marker``: stands in for any code a checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """A Lightning-looking ``.ckpt`` carrying a payload, and the marker it would create."""
    marker, path = tmp_path / "ran", tmp_path / "someone" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": Payload(marker)},
               path)
    return path, marker


def test_hostile_checkpoint_is_refused_by_name(hostile):
    path, marker = hostile
    with pytest.raises(CheckpointError, match=str(path)):
        read_state(path)
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_on_resume(hostile, tmp_path, monkeypatch):
    """Lightning's resume goes through our CheckpointIO, even when the environment asks
    torch for full unpickling by default."""
    path, marker = hostile
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                         default_root_dir=tmp_path)
    with pytest.raises(CheckpointError, match=str(path)):
        trainer.fit(BoringModel(), ckpt_path=path)
    assert not marker.exists()


def test_own_run_resumes_weights_only(tmp_path, monkeypatch):
    """A real run's checkpoint (trainable weights, optimizer, lr schedule, loops, callbacks)
    resumes with every torch.load weights-only."""
    args = ["trainer.progress_bar=false", "logger.wandb=false", "trainer.checkpoint_every=2",
            "method.sample_steps=2", "method.sample_num_ids=[1]", "data.num_demo_samples=8",
            f"output_dir={tmp_path}", "name=resume"]
    assert train.main([*args, "trainer.max_steps=2"]) == 0
    calls, real = [], torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    assert train.main([*args, "trainer.max_steps=3"]) == 0
    assert calls and all(calls), calls
    monkeypatch.undo()
    state = read_state(tmp_path / "resume" / "checkpoints" / "last.ckpt")
    assert state and torch.load(tmp_path / "resume" / "checkpoints" / "last.ckpt",
                                weights_only=True)["global_step"] == 3


# --- prepare: keys from input data never name files outside --output --------------------

def test_traversing_keys_write_nothing_outside_the_output(tmp_path, shard_samples):
    """Tar keys ``../../x`` and ``/abs/x`` would name previews outside ``--output``: such
    samples are skipped and counted as ``unsafe_key``; a good key beside them is kept."""
    import io

    import skimage.data
    import webdataset as wds
    from PIL import Image

    from datamodules.prepare import main as prepare

    jpg = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((256, 256)).save(jpg, format="JPEG")
    inputs, out = tmp_path / "in", tmp_path / "deep" / "out"
    inputs.mkdir()
    keys = ["../../escaped", f"{tmp_path}/absolute", "good"]
    with wds.TarWriter(str(inputs / "000.tar"), encoder=False) as writer:
        for key in keys:
            writer.write({"__key__": key, "jpg": jpg.getvalue(), "txt": b"an astronaut"})
    stats = prepare(["images", "--input", str(inputs), "--output", str(out), "--workers", "1",
                     "--pose", "faces", "--min-face-size", "20"])
    assert stats["kept"] == 1 and stats["rejected"] == {"unsafe_key": 2}
    assert list(shard_samples(out)) == ["good"]
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert all(out in p.parents or inputs in p.parents for p in written), written
