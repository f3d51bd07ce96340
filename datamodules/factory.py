"""The DataModule an experiment config names."""
from __future__ import annotations

import pytorch_lightning as pl


def _required(data, key: str) -> str:
    value = getattr(data, key)
    if not value:
        from ldm_ext.config import ConfigError

        raise ConfigError(f"data.kind={data.kind} needs data.{key}")
    return value


def build_datamodule(cfg) -> pl.LightningDataModule:
    """``data.kind``: demo -> synthetic shards (written on first use); shards -> ours;
    laion_face / celebv_text -> a prepared folder (``data.root``); folder -> images prepared
    on first use (``data.root``); single_image -> one photo (``data.image``, SeFi-IDE)."""
    from datamodules.celebv_text import CelebVTextDataModule
    from datamodules.demo import DemoDataModule
    from datamodules.folder import FolderDataModule
    from datamodules.laion_face import LaionFaceDataModule
    from datamodules.shards import ShardDataModule
    from datamodules.single_image import SingleImageDataModule
    from ldm_ext.registry import method_spec

    data = cfg.data
    if data.kind == "single_image":
        return SingleImageDataModule(_required(data, "image"), resolution=data.resolution,
                                     batch_size=data.batch_size, num_workers=data.num_workers,
                                     seed=cfg.seed)
    common = dict(resolution=data.resolution, batch_size=data.batch_size,
                  num_workers=data.num_workers, num_slots=cfg.method.num_slots,
                  seed=cfg.seed, shuffle_buffer=data.shuffle_buffer,
                  view=method_spec(cfg.method.name).view, random_flip=data.random_flip,
                  view_options=dict(data.view_options), oversample=dict(data.oversample),
                  max_people=data.max_people, float_on_device=True)  # the Trainer calls on_after_batch_transfer
    if data.kind == "demo":
        return DemoDataModule(root=data.root, num_samples=data.num_demo_samples,
                              size=data.resolution, **common)
    if data.kind == "shards":
        return ShardDataModule(_required(data, "shards"), **common)
    kinds = {"laion_face": LaionFaceDataModule, "celebv_text": CelebVTextDataModule,
             "folder": FolderDataModule}
    return kinds[data.kind](_required(data, "root"), **common)
