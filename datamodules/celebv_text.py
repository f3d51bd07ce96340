"""CelebV-Text: one frame per clip with a reference face from the middle frame and a caption
naming the subject man/woman (PortraitBooth, docs/methods.md §4), from ``prepare videos``."""
from __future__ import annotations

from datamodules.shard_folder import prepared_shards
from datamodules.shards import ShardDataModule


class CelebVTextDataModule(ShardDataModule):
    """``ShardDataModule`` over a prepared CelebV-Text folder. Its samples carry
    ``Sample.reference`` (3, 160, 160) uint8 besides the target frame's faces.

    Args:
        root: output folder of ``prepare videos``.
        **kwargs: the other ``ShardDataModule`` arguments.
    """

    def __init__(self, root: str, resolution: int = 512, **kwargs):
        super().__init__(prepared_shards(root, "videos"), resolution=resolution, **kwargs)
        self.root = root
