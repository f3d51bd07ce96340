"""A folder of images as training data: prepared once into shards beside a cache, or read
directly when the folder already is ``prepare``'s output."""
from __future__ import annotations

import hashlib
from pathlib import Path

from datamodules.prepare import PrepareConfig, prepare
from datamodules.prepare.annotate import SampleAnnotator
from datamodules.prepare.sources import plan_images
from datamodules.shard_folder import is_prepared
from datamodules.shards import ShardDataModule


def default_output(folder: str | Path) -> Path:
    """Cache folder of a prepared image folder: ``$IDFORGE_CACHE/folders/<hash of path>``."""
    from ldm_ext.tiny import cache_root  # the project's cache convention

    digest = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:12]
    return cache_root() / "folders" / digest


class FolderDataModule(ShardDataModule):
    """Images (+ ``.txt`` captions) of ``folder``, annotated by ``prepare`` on first use.

    Args:
        folder: images, or a folder written by ``prepare`` (read as is).
        output: where the shards go (default: a cache folder named by ``folder``'s path);
            an interrupted preparation resumes there.
        annotator: the stages (default: MTCNN, OpenPose and the face parser or their
            fallbacks).
        samples_per_shard, prepare_workers: ``prepare``'s task size and processes.
        **kwargs: the other ``ShardDataModule`` arguments.
    """

    def __init__(self, folder: str, output: str | None = None,
                 annotator: SampleAnnotator | None = None, samples_per_shard: int = 100,
                 prepare_workers: int | None = None, **kwargs):
        self.folder = str(folder)
        self.output = self.folder if is_prepared(folder) else str(output or
                                                                   default_output(folder))
        super().__init__(str(Path(self.output) / "shard-*.tar"), **kwargs)
        self.annotator = annotator or SampleAnnotator()
        self.samples_per_shard, self.prepare_workers = samples_per_shard, prepare_workers

    def prepare_data(self) -> None:
        """Annotate the shards that are not done yet (a no-op once all are)."""
        if self.output != self.folder:
            tasks = plan_images(self.folder, self.samples_per_shard)
            prepare(tasks, PrepareConfig(self.output, self.annotator), self.prepare_workers)

    def build_dataset(self, start: int = 0):
        self.prepare_data()  # also without a Trainer; resumes / skips finished shards
        return super().build_dataset(start)
