"""The DataModule an experiment config names."""
from __future__ import annotations

import pytorch_lightning as pl


def build_datamodule(cfg) -> pl.LightningDataModule:
    """``data.kind`` demo -> synthetic shards (written on first use); shards -> ours."""
    from datamodules.demo import DemoDataModule
    from datamodules.shards import ShardDataModule

    data = cfg.data
    common = dict(resolution=data.resolution, batch_size=data.batch_size,
                  num_workers=data.num_workers, num_slots=cfg.method.num_slots,
                  seed=cfg.seed, shuffle_buffer=data.shuffle_buffer,
                  view=cfg.method.name, random_flip=data.random_flip)
    if data.kind == "demo":
        return DemoDataModule(root=data.root, num_samples=data.num_demo_samples,
                              size=data.resolution, **common)
    if not data.shards:
        from ldm_ext.config import ConfigError

        raise ConfigError("data.kind=shards needs data.shards (a pattern of .tar files)")
    return ShardDataModule(data.shards, **common)
