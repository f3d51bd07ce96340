"""LAION-Face: image-caption pairs with faces, prepared by ``datamodules.prepare images``."""
from __future__ import annotations

from datamodules.shard_folder import prepared_shards
from datamodules.shards import ShardDataModule


class LaionFaceDataModule(ShardDataModule):
    """``ShardDataModule`` over a prepared LAION-Face folder, with the InstantFamily recipe's
    defaults (512 px, random flip; docs/methods.md §1).

    Args:
        root: output folder or URL (``s3://``...) of ``prepare images``
            (``shard-NNNNNN.tar`` + ``.json``).
        **kwargs: the other ``ShardDataModule`` arguments.
    """

    def __init__(self, root: str, resolution: int = 512, random_flip: bool = True, **kwargs):
        super().__init__(prepared_shards(root), resolution=resolution, random_flip=random_flip,
                         **kwargs)
        self.root = root
