"""The end of train.py and ldm_ext.fit: where the run put everything, and the
``wandb sync`` command while wandb's run is offline."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image


from ldm_ext import fit, training
from ldm_ext.run_summary import run_summary


def fake_run(root: Path, offline: int = 1) -> Path:
    """A run folder as train.py leaves it, with ``offline`` unsynced wandb runs."""
    run = root / "r"
    for name in ("config.yaml", "trainable.safetensors", "checkpoints/last.ckpt",
                 "samples/step_0000002.png", "samples/step_0000004.png", "eval/eval.csv",
                 "csv/version_0/metrics.csv"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    for k in range(offline):
        (run / "wandb" / f"offline-run-2026010{k}_000000-r").mkdir(parents=True)
    if offline:
        os.symlink(f"offline-run-2026010{offline - 1}_000000-r", run / "wandb" / "latest-run")
    return run


def rows(run: Path) -> dict[str, str]:
    return dict(line.strip().split("  ", 1) for line in run_summary(run))


def test_summary_names_every_output(tmp_path):
    run = fake_run(tmp_path)
    found = {k.strip(): v.strip() for k, v in rows(run).items()}
    assert found["run folder"] == str(run)
    assert found["last checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert found["trainable weights"] == str(run / "trainable.safetensors")
    assert found["sample grids"] == f"{run / 'samples'}/ (2, last step_0000004.png)"
    assert found["eval results"].startswith(str(run / "eval" / "eval.csv"))
    assert found["metrics (CSV)"] == str(run / "csv" / "version_0" / "metrics.csv")
    offline = run / "wandb" / "offline-run-20260100_000000-r"
    assert found["wandb"] == f"wandb sync {offline}"
    (offline / "run-r.wandb.synced").write_text("")  # what `wandb sync` leaves
    assert rows(run)["wandb"].strip() == f"synced ({offline})"


def test_summary_of_a_resumed_offline_run_and_of_missing_outputs(tmp_path):
    run = fake_run(tmp_path, offline=2)
    assert rows(run)["wandb"].strip().startswith(f"wandb sync {run / 'wandb'}/offline-run-*")
    for name in ("eval/eval.csv", "trainable.safetensors"):
        (run / name).unlink()
    found = {k.strip(): v.strip() for k, v in rows(run).items()}
    assert found["eval results"].startswith("none (trainer.eval_every=K")
    assert found["trainable weights"] == "none yet"


def test_train_ends_with_the_summary(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path)
    monkeypatch.setattr(training, "run", lambda cfg: run)
    assert training.main([f"output_dir={tmp_path}", "name=r"]) == 0
    out = capsys.readouterr().out.splitlines()
    start = out.index("trained r:")
    assert out[start + 1:] == run_summary(run)


def test_fit_ends_with_the_summary_and_how_to_generate(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path, offline=0)
    photo = tmp_path / "alice.jpg"
    Image.new("RGB", (32, 32), (200, 150, 120)).save(photo)  # fit decodes it before loading
    monkeypatch.setattr(fit, "fit_identity", lambda cfg: run / "trainable.safetensors")
    assert fit.main(["--photo", str(photo), "--config",
                     "configs/experiment/sefi_ide_tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert "fitted alice:" in out and f"trainable weights  {run / 'trainable.safetensors'}" in out
    assert f"python -m ldm_ext.generate --run {run}" in out
    assert "off (logger.wandb=false)" in out
