"""LAION-Face: image-caption pairs with faces, prepared by ``datamodules.prepare images``."""
from __future__ import annotations

import json
from pathlib import Path

from datamodules.shards import ShardDataModule


def prepared_shards(root: str | Path) -> str:
    """The shard pattern of a folder written by ``datamodules.prepare``; errors when the
    folder holds no finished shard (``shard-*.json`` is each shard's done-marker)."""
    root = Path(root)
    if not any(root.glob("shard-*.json")):
        raise FileNotFoundError(
            f"{root} holds no prepared shards: run `python -m datamodules.prepare images "
            f"--input <images|parquet|tars> --output {root}` first")
    return str(root / "shard-*.tar")


def prepared_stats(root: str | Path) -> dict:
    """``stats.json`` of a prepared folder (kept, rejected by reason, faces per image)."""
    return json.loads((Path(root) / "stats.json").read_text())


class LaionFaceDataModule(ShardDataModule):
    """``ShardDataModule`` over a prepared LAION-Face folder, with the InstantFamily recipe's
    defaults (512 px, random flip; METHODS.md §1).

    Args:
        root: output folder of ``prepare images`` (``shard-NNNNNN.tar`` + ``.json``).
        **kwargs: the other ``ShardDataModule`` arguments.
    """

    def __init__(self, root: str, resolution: int = 512, random_flip: bool = True, **kwargs):
        super().__init__(prepared_shards(root), resolution=resolution, random_flip=random_flip,
                         **kwargs)
        self.root = root
