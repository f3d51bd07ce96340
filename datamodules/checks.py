"""What a training config's data is checked for before torch loads: the key its ``data.kind``
reads (``ldm_ext.registry.DATA_KINDS``) is set and names something that exists (a folder, a
file), a shard pattern matches shards, a ``prepare`` output is finished, a bucket URL is
reachable. Each mistake is one line naming the key (``ConfigError``), told before the run
folder is made.
"""
from __future__ import annotations

from pathlib import Path

from ldm_ext.config import ConfigError
from ldm_ext.registry import data_kind


def check_data_paths(cfg) -> None:
    """The data key the config's ``data.kind`` reads is set and, as a local path, names
    something that exists: checked in a blink, before any import of torch."""
    kind = data_kind(cfg.data.kind)  # what it reads (DATA_KINDS); demo writes its own shards
    if kind.source is None:
        return
    key, what = kind.source, kind.names
    value = cfg.data[key]
    if not value:
        raise ConfigError(f"data.kind={cfg.data.kind} needs data.{key} (the {what} of the data)")
    if "://" in str(value):  # a URL (s3://...): check_data_store reaches it
        return
    path = Path(value)
    if (what == "folder" and not path.is_dir()) or (what == "file" and not path.is_file()):
        hint = " (the --output of `python -m datamodules.prepare`)" if kind.prepare else ""
        raise ConfigError(f"data.{key}={value!r}: no such {what}{hint}")


def check_data_store(cfg) -> None:
    """A shard pattern (``data.shards``) matches shards and a ``prepare`` output
    (``data.root``) is finished, local or a URL; a URL's store errors (no credentials, no
    bucket) are one line naming the key, as ``prepare`` tells them."""
    kind = data_kind(cfg.data.kind)
    if kind.names != "pattern" and not kind.prepare:
        return
    from datamodules import storage
    from datamodules.shard_folder import prepared_shards

    key = kind.source
    value = cfg.data[key]
    with storage.named_errors(f"data.{key}", value):
        if kind.names == "pattern":
            if not storage.expand(value):
                raise ConfigError(f"data.{key}={value!r}: no shards match")
            return
        try:
            prepared_shards(value, kind.prepare)
        except FileNotFoundError as err:
            raise ConfigError(f"data.root={value!r}: {err}") from None
