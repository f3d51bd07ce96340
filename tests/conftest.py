"""Test-wide settings: offline hubs, a private cache, deterministic seeds, tiny setups."""
from __future__ import annotations

import os

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
