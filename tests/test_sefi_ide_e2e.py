"""SeFi-IDE end to end on the tiny offline setup: ``ldm_ext.fit`` (resumable, a finished fit
reused), ``ldm_ext.generate`` with one and with two identities in one prompt, and eval.py
fitting the subjects that have no checkpoint (cached across reruns)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image
from safetensors import safe_open

from ldm_ext.evaluation import cli as evaluate
from ldm_ext import fit
from ldm_ext.cli import InputError
from ldm_ext.generate import main as generate

TINY = "configs/experiment/sefi_ide_tiny.yaml"
FAST = ["trainer.progress_bar=false", "trainer.checkpoint_every=2", "method.sample_steps=2"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _step(path: Path) -> int:
    with safe_open(str(path), "pt") as handle:
        return int(handle.metadata()["global_step"])


@pytest.fixture
def fitted(sefi_ide_fits: dict[str, Path]) -> dict[str, Path]:
    """Two identities fitted for 2 steps; alice then resumed to 3 (tests/tiny_runs.py),
    once per session."""
    return sefi_ide_fits


def test_fit_writes_a_resumable_identity(fitted, capsys):
    identity = fitted["alice"] / "trainable.safetensors"
    assert _step(identity) == 3  # resumed from step 2's checkpoint, one more step
    with safe_open(str(identity), "pt") as handle:
        meta, keys = handle.metadata(), set(handle.keys())
    assert json.loads(meta["stage_tokens"])["num_stages"] == 5
    assert "name: sefi_ide" in meta["config"] and "stage_tokens.word" in keys
    assert len(list((fitted["alice"] / "samples").glob("*.png"))) >= 1
    stamp = identity.stat().st_mtime_ns
    assert fit.main(["--config", TINY, "--photo", str(fitted["alice"].parent / "alice.png"),
                     "--name", "alice", f"output_dir={fitted['alice'].parent}",
                     "trainer.max_steps=3", *FAST]) == 0
    assert "already fitted" in capsys.readouterr().err and identity.stat().st_mtime_ns == stamp


def test_fit_refuses_a_method_without_photos(tmp_path):
    assert fit.main(["--config", "configs/experiment/demo.yaml", "--photo", "x.png",
                     f"output_dir={tmp_path}"]) == 2


def test_generate_one_and_two_identities(fitted, tmp_path):
    common = ["--run", str(fitted["alice"]), "--size", "64", "--steps", "2"]
    [one] = generate([*common, "--prompt", "a photo of V* on the beach",
                      "--out", str(tmp_path / "one.png")])
    assert Image.open(one).size == (64, 64)
    pair = ["--identity", f"alice={fitted['alice']}",
            "--identity", str(fitted["bob"] / "trainable.safetensors")]
    [two] = generate([*common, *pair, "--prompt", "V1* and V2* at the beach",
                      "--out", str(tmp_path / "two.png")])
    [swapped] = generate([*common, *pair, "--prompt", "V2* and V1* at the beach",
                          "--out", str(tmp_path / "swapped.png")])
    assert Image.open(two).tobytes() != Image.open(swapped).tobytes()
    with pytest.raises(InputError, match="names identity 3, 2 given"):
        generate([*common, *pair, "--prompt", "V3* at the beach", "--out", str(tmp_path / "x.png")])


def test_eval_fits_missing_subjects_once(fitted, tmp_path, capsys):
    """astronaut brings its checkpoint; t1_0 is fitted with alice's recipe, then reused."""
    alice = fitted["alice"] / "trainable.safetensors"
    args = ["--config", "configs/eval/tiny.yaml", "--checkpoint", str(fitted["alice"]),
            f"output_dir={tmp_path}", "subjects.ids=[astronaut,t1_0]", "subjects.fit=true",
            f"subjects.checkpoints={{astronaut: '{alice}'}}", "prompts.marker=V*",
            "prompts.limit=1"]
    assert evaluate.main(args) == 0
    out = tmp_path / "tiny"
    fitted_t1 = out / "fitted" / "t1_0" / "trainable.safetensors"
    assert _step(fitted_t1) == 3 and not (out / "fitted" / "astronaut").exists()
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all("V*" in r["prompt"] for r in records)
    assert {r["method"] for r in records} == {"sefi_ide"}
    stamp = fitted_t1.stat().st_mtime_ns
    capsys.readouterr()
    assert evaluate.main(args) == 0
    assert "t1_0: already fitted" in capsys.readouterr().err
    assert fitted_t1.stat().st_mtime_ns == stamp


def test_eval_config_checkpoint_needs_subject_weights(tmp_path, capsys):
    args = ["--config", "configs/eval/tiny.yaml", "--checkpoint", TINY,
            f"output_dir={tmp_path}", "prompts.limit=1"]
    assert evaluate.main(args) == 2
    assert "holds no weights" in capsys.readouterr().err


def test_a_finished_fit_is_reused_only_for_the_same_photo_and_recipe(tmp_path):
    """A finished run folder of that name holds the identity of the photo and config it was
    fitted with: another photo (or method) under the same name is not "already fitted"
    (train.py then refuses the folder in one line instead of a wrong identity coming back)."""
    from safetensors.torch import save_file

    from ldm_ext.config import to_yaml

    photos = {}
    for name, array in {"alice": skimage.data.astronaut(), "bob": skimage.data.chelsea()}.items():
        photos[name] = tmp_path / f"{name}.png"
        Image.fromarray(array[:64, :64]).save(photos[name])
    cfg = fit.fit_config(TINY, photos["alice"], "alice", output_dir=tmp_path / "runs")
    run_dir = tmp_path / "runs" / "alice"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    save_file({"stage_tokens.word": torch.zeros(2)}, str(run_dir / "trainable.safetensors"),
              metadata={"global_step": str(cfg.trainer.max_steps)})
    assert fit.finished_identity(cfg) == run_dir / "trainable.safetensors"
    other = fit.fit_config(TINY, photos["bob"], "alice", output_dir=tmp_path / "runs")
    assert fit.finished_identity(other) is None
    lam = fit.fit_config(TINY, photos["alice"], "alice", ["method.attention_loss_weight=0"],
                         output_dir=tmp_path / "runs")
    assert fit.finished_identity(lam) is None
