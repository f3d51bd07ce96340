"""The DataModule an experiment config names: ``data.kind`` looked up in the registry's
``DATA_KINDS`` (``ldm_ext/registry.py``), the one table of data kinds."""
from __future__ import annotations

import pytorch_lightning as pl


def _required(data, key: str) -> str:
    value = getattr(data, key)
    if not value:
        from ldm_ext.config import ConfigError

        raise ConfigError(f"data.kind={data.kind} needs data.{key}")
    return value


def build_datamodule(cfg) -> pl.LightningDataModule:
    """The DataModule of ``data.kind``: its source (``DataKind.source``) first, then the
    batching settings, and, for kinds that stream the method's view, the view and the
    stream's settings (num_slots, shuffle, augmentation, oversampling)."""
    from ldm_ext.registry import data_kind

    data = cfg.data
    kind = data_kind(data.kind)
    args = [_required(data, kind.source)] if kind.source else []
    inputs = dict(resolution=data.resolution, batch_size=data.batch_size,
                  num_workers=data.num_workers, seed=cfg.seed)
    if kind.method_view:
        inputs.update(num_slots=cfg.method.num_slots, shuffle_buffer=data.shuffle_buffer,
                      view=cfg.method.name, random_flip=data.random_flip,
                      view_options=dict(data.view_options), oversample=dict(data.oversample),
                      max_people=data.max_people,
                      float_on_device=True)  # the Trainer calls on_after_batch_transfer
    options = {arg: data[key] for arg, key in kind.options.items()}
    return kind.datamodule_class(*args, **inputs, **options)
