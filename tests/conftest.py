"""Test-wide settings: offline hubs, a private cache, deterministic seeds, tiny setups."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing model fails at once, no retries
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep, not spin

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def idforge_cache(tmp_path_factory):
    """Tiny backbones and demo shards are built once per test session, not in ~/.cache."""
    root = tmp_path_factory.mktemp("idforge-cache")
    os.environ["IDFORGE_CACHE"] = str(root)
    return root


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, idforge_cache) -> Path:
    """A 2-step tiny InstantFamily run (train.py's demo) that also evaluates at step 2
    (trainer.eval_every); shared by the eval, provenance and determinism tests."""
    out = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "train.py", f"output_dir={out}", "name=x", "trainer.max_steps=2",
           "logger.wandb=false", "method.sample_steps=2", "data.num_demo_samples=16",
           "trainer.eval_every=2", "trainer.progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "x"


@pytest.fixture(scope="session")
def portraitbooth_run(tmp_path_factory, idforge_cache) -> Path:
    """A 2-step tiny PortraitBooth run (experiment portraitbooth_demo)."""
    from ldm_ext import training

    out = tmp_path_factory.mktemp("runs")
    assert training.main(["--config", str(ROOT / "configs" / "experiment" /
                                          "portraitbooth_demo.yaml"),
                       f"output_dir={out}", "trainer.max_steps=2",
                       "trainer.checkpoint_every=2", "trainer.progress_bar=false",
                       "logger.wandb=false", "method.sample_steps=2",
                       "data.num_demo_samples=8"]) == 0
    return out / "portraitbooth_demo"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of many tiny tensor ops (data, scoring): on a busy
    2-core machine two threads only contend (measured several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_prepared(out) -> dict:
    """Key -> validated ``Sample`` of every shard in a ``prepare`` output folder."""
    import webdataset as wds

    from datamodules.codec import decode_sample
    from datamodules.schema import validate

    raw = wds.DataPipeline(wds.SimpleShardList(sorted(str(p) for p in out.glob("*.tar"))),
                           wds.tarfile_to_samples())
    return {r["__key__"]: validate(decode_sample(r)) for r in raw}


@pytest.fixture(scope="session")
def shard_samples():
    """``read_prepared``: the samples of a prepared folder, by key."""
    return read_prepared


# ----- the tiny trained run of each method, once per session (tests/tiny_runs.py) ---------
@pytest.fixture(scope="session")
def storymaker_run(tmp_path_factory):
    from tiny_runs import train_storymaker

    return train_storymaker(tmp_path_factory.mktemp("storymaker"))


@pytest.fixture(scope="session")
def sefi_ide_fits(tmp_path_factory):
    """Fitted identities by name (alice, bob): each a SeFi-IDE run folder."""
    from tiny_runs import fit_sefi_ide

    return fit_sefi_ide(tmp_path_factory.mktemp("sefi"))


@pytest.fixture(scope="session")
def demo_subjects(tmp_path_factory):
    """The demo subject photos (ldm_ext/evaluation/subjects.py): <root>/<id>/0.png, faces
    MTCNN finds."""
    from ldm_ext.evaluation.subjects import write_demo_subjects

    return write_demo_subjects(tmp_path_factory.mktemp("subjects"))
