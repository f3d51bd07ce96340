"""Webdataset pipeline over our shards, and the Lightning DataModule that streams it.

The stream is a stage list (open_clip ``get_wds_dataset`` style), rebuilt for every epoch::

    shards (shuffled with seed (seed, e)) -> split by node -> split by worker
    -> tar expand (counting error handler) -> drop keys already seen this epoch (count them)
    -> [repeat samples by their face count: ``oversample``, datamodules/oversample.py]
    -> shuffle buffer (seed (seed, e))
    -> decode (OpenCV / PIL, json, npy; no pickle; large JPEGs at a reduced scale; a
       batch's worth at a time: JSON and arrays of each, then pixels of each)
    -> validate (skip and count by reason) -> at least ``min_faces`` faces
    -> [skip the samples a resumed run already consumed]
    -> a batch of decoded samples -> transform and per-method view of each -> collate

Epochs repeat forever, so training length is ``max_steps``. Every epoch's shard order is
the same on all ranks and workers (shared epoch); the per-sample generator (slot choice,
crop, flip) is seeded by (seed, epoch, rank, worker, position in the epoch), never by global
RNG. The stream is therefore a pure function of (shards, seed, world size, num_workers,
batch size): ``start`` (samples this rank consumed) fast-forwards it exactly.

Workers: with ``num_workers > 1`` every worker reads its own subset of shards (needs at least
``world_size * num_workers`` shards) and the DataLoader takes whole batches from workers in
turn, so which sample lands in which batch depends on ``num_workers``. Resuming is exact only
with the same world size, ``num_workers`` and batch size (a resumed DataLoader's worker 0
continues the stream of the worker that owed the next batch); the demo config uses
``num_workers=0`` so its batches do not depend on the machine. Skipping decodes and validates
the consumed samples (no transform): about one image decode per consumed sample.
"""
from __future__ import annotations

import logging
import multiprocessing
import random
from functools import partial
from itertools import count, islice
from typing import Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from datamodules import storage
from datamodules.codec import Unpacked, decode_pixels, read_sample
from datamodules.oversample import REPEAT, check_factors, oversample
from datamodules.schema import OPTIONAL_KEYS, REASONS, BadSample, Sample, validate
from datamodules.transforms import ResizeCrop
from datamodules.views import View, build_view

log = logging.getLogger(__name__)
SHARD_SHUFFLE, SAMPLE_SHUFFLE, SAMPLE_RANDOMNESS = 0, 1, 2  # seed streams
MAX_EMPTY_EPOCHS = 10  # a worker may draw only bad shards for a few epochs, not forever


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integer parts, the same in every process (unlike ``hash``)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def expand_shards(shards: str | list[str]) -> list[str]:
    """Shard paths or URLs (``s3://``, any fsspec protocol: ``datamodules.storage``) from a
    list, ``::``-joined patterns, brace patterns and/or globs."""
    urls = storage.expand(shards)
    if not urls:
        raise ValueError(f"no shards match {shards!r}")
    return urls


class SkipCounter:
    """Counts skipped samples by reason, summed over DataLoader worker processes.

    The counts live in shared memory (created before the workers start), so the training
    process reads what its workers skipped; ``counts`` is what a callback logs.
    """

    def __init__(self):
        self._array = multiprocessing.get_context().Array("q", len(REASONS))

    def add(self, reason: str, n: int = 1) -> None:
        with self._array.get_lock():
            self._array[REASONS.index(reason)] += n

    @property
    def counts(self) -> dict[str, int]:
        """Skipped samples per reason (reasons never seen are left out)."""
        with self._array.get_lock():
            return {r: int(n) for r, n in zip(REASONS, self._array[:]) if n}

    def sample_handler(self, exn: Exception) -> bool:
        """webdataset handler for decode/validate: count a ``BadSample`` (once per sample: not
        its oversampled repeats), re-raise bugs."""
        if not isinstance(exn, BadSample):
            raise exn
        if not getattr(exn, "repeat", 0):
            self.add(exn.reason)
        return True

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler for opening and expanding tars: count and go on. A key
        repeated in consecutive tar members counts as ``duplicate_key`` (once per member)."""
        self.add("duplicate_key" if "duplicate file name" in str(exn) else "tar_error")
        log.warning("skipping unreadable shard data: %s", exn)
        return True


def consumed_samples(trainer: pl.Trainer | None, batch_size: int) -> int:
    """Samples one rank consumed before now: optimizer steps x batches per step x size (a
    resumed run's ``global_step`` is restored before its DataLoader is built)."""
    if trainer is None:
        return 0
    return trainer.global_step * trainer.accumulate_grad_batches * batch_size


def worker_start(start: int, batch_size: int, worker: int, num_workers: int) -> int:
    """Samples already taken from (logical) worker ``worker``'s stream when the rank
    consumed ``start``: the DataLoader takes whole batches from its workers in turn.
    """
    if num_workers <= 1:
        return start
    if start % batch_size:
        raise ValueError(f"start={start} is not a whole number of batches of {batch_size}")
    batches = start // batch_size  # batch i came from worker i % num_workers
    return (batches - worker + num_workers - 1) // num_workers * batch_size


def logical_worker(worker: int, num_workers: int, start: int, batch_size: int) -> int:
    """Which worker's stream this DataLoader worker continues after ``start`` samples.

    A new DataLoader asks worker 0 first, but batch ``start // batch_size`` came from
    worker ``(start // batch_size) % num_workers``; rotating the ids keeps the order.
    """
    return (worker + start // batch_size) % num_workers


def split_every(src: Iterator, index: int, count: int) -> Iterator:
    """Every ``count``-th item from ``index`` on: webdataset's ``split_by_node`` /
    ``split_by_worker`` with explicit ids (the rank is read where the dataset is built, so
    workers need no process group; a worker id may be rotated on resume)."""
    return islice(src, index, None, count)


def decode_and_validate(raw: dict, min_faces: int = 0,
                        optional: tuple[str, ...] = OPTIONAL_KEYS, min_side: int = 0,
                        max_people: int = 0) -> Sample:
    """Our decoders (of the ``optional`` members asked for; a JPEG at least twice
    ``min_side`` at a reduced scale), then the schema checks, the face count and the
    people count (faces or pose skeletons, whichever is more; ``max_people`` 0: no limit);
    all raise ``BadSample`` (marked with the raw sample's ``REPEAT`` for the counter)."""
    return _checked(_read(raw, optional, min_side), min_faces, max_people)


def _read(raw: dict, optional: tuple[str, ...], min_side: int) -> Unpacked:
    """``read_sample``, a ``BadSample`` marked with the raw sample's ``REPEAT``."""
    try:
        return read_sample(raw, optional, min_side)
    except BadSample as err:
        err.repeat = raw.get(REPEAT, 0)
        raise


def _checked(unpacked: Unpacked, min_faces: int, max_people: int) -> Sample:
    """The rest of ``decode_and_validate``: pixels, schema checks, face and people counts."""
    try:
        sample = validate(decode_pixels(unpacked))
        if sample.num_faces < min_faces:
            raise BadSample("no_faces", f"{sample.num_faces} < {min_faces} faces")
        people = max(sample.num_faces, len(sample.people))
        if max_people and people > max_people:
            raise BadSample("too_many_people", f"{people} > {max_people} people")
    except BadSample as err:
        err.repeat = unpacked.raw.get(REPEAT, 0)
        raise
    return sample


def decode_in_groups(raws: Iterator[dict], size: int, handler: Callable[[Exception], bool],
                     min_faces: int = 0, optional: tuple[str, ...] = OPTIONAL_KEYS,
                     min_side: int = 0, max_people: int = 0) -> Iterator[Sample]:
    """``decode_and_validate`` of each raw sample, in order (a sample it refuses goes to
    ``handler``, as in ``wds.map``: True skips it, False ends the stream), ``size`` samples
    at a time: first the light, Python-heavy part of each (``read_sample``: tar members,
    JSON, arrays), then the pixels and checks of each. Interleaved with JPEG decodes that
    Python code ran cold, each step several times slower than warm."""
    raws = iter(raws)
    while group := list(islice(raws, size)):
        unpacked = []
        for raw in group:
            try:
                unpacked.append(_read(raw, optional, min_side))
            except Exception as exn:  # noqa: BLE001  the handler decides, as in wds.map
                if not handler(exn):
                    return
        for item in unpacked:
            try:
                sample = _checked(item, min_faces, max_people)
            except Exception as exn:  # noqa: BLE001
                if not handler(exn):
                    return
                continue
            yield sample


def drop_duplicates(samples: Iterator[dict], counter: SkipCounter) -> Iterator[dict]:
    """Raw samples whose ``__key__`` was not seen before in this stream (one epoch of one
    worker); repeats are counted as ``duplicate_key``. Before decoding and oversampling, so
    that only the shards' own repeats are dropped. Memory: one key per sample of the epoch."""
    seen = set()
    for raw in samples:
        key = raw.get("__key__")
        if key in seen:
            counter.add("duplicate_key")
            continue
        seen.add(key)
        yield raw


class ShardStream(IterableDataset):
    """Infinite, deterministic, resumable stream of collated batches (see module doc).

    Args:
        urls: shard paths.
        transform: ``(Sample, torch.Generator) -> Sample`` at the training resolution.
        view: per-method view: ``(Sample, Generator) -> dict`` with a ``collate`` method.
        batch_size: samples per batch (batches are formed in the worker).
        seed: base seed of every shuffle and of the per-sample randomness.
        shuffle_buffer: samples in the shuffle buffer (<= 1: no sample shuffle).
        start: samples this rank already consumed (resume).
        counter: where skipped samples are counted.
        rank, world_size: this process's shard split; default: torch.distributed (or the
            RANK / WORLD_SIZE environment) at construction.
        min_faces: samples with fewer faces are skipped (``no_faces``).
        decode_side: the shorter image side ``transform`` makes (its resolution): JPEGs at
            least twice as large are decoded at a reduced scale (0: always at full size).
        oversample: ``{faces: repeats}``: a sample with that many faces comes ``repeats``
            times per epoch (datamodules/oversample.py); empty: each once.
        max_people: samples showing more people are skipped (``too_many_people``); 0: any.
    """

    def __init__(self, urls: list[str], transform: Callable, view: View, batch_size: int,
                 seed: int = 0, shuffle_buffer: int = 1000, start: int = 0,
                 counter: SkipCounter | None = None, rank: int | None = None,
                 world_size: int | None = None, min_faces: int = 1, decode_side: int = 0,
                 oversample: dict[int, int] | None = None, max_people: int = 0):
        super().__init__()
        self.min_faces, self.decode_side, self.max_people = min_faces, decode_side, max_people
        self.oversample = check_factors(oversample)
        self.urls, self.transform, self.view = list(urls), transform, view
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.start, self.counter = start, counter or SkipCounter()
        found_rank, found_world, _, _ = wds.utils.pytorch_worker_info()
        self.rank = found_rank if rank is None else rank
        self.world_size = found_world if world_size is None else world_size

    def epoch(self, epoch: int, worker: int = 0, num_workers: int = 1) -> wds.DataPipeline:
        """Validated samples of one epoch for this rank and (logical) worker."""
        sample_seed = derive_seed(self.seed, epoch, SAMPLE_SHUFFLE, self.rank, worker)
        repeat = [partial(oversample, factors=self.oversample)] if self.oversample else []
        return wds.DataPipeline(
            wds.SimpleShardList(self.urls, seed=derive_seed(self.seed, epoch, SHARD_SHUFFLE)),
            partial(split_every, index=self.rank, count=self.world_size),
            partial(split_every, index=worker, count=num_workers),
            storage.tar_samples(handler=self.counter.tar_handler),
            partial(drop_duplicates, counter=self.counter),
            *repeat,
            wds.shuffle(self.shuffle_buffer, self.shuffle_buffer,
                        rng=random.Random(sample_seed)),
            partial(decode_in_groups, size=self.batch_size, handler=self.counter.sample_handler,
                    min_faces=self.min_faces, min_side=self.decode_side,
                    max_people=self.max_people,
                    optional=tuple(getattr(self.view, "optional", OPTIONAL_KEYS))),
        )

    def positioned(self, worker: int, num_workers: int) -> Iterator[tuple[int, int, Sample]]:
        """(epoch, position in epoch, sample) forever; fails after ``MAX_EMPTY_EPOCHS``
        epochs in a row without a valid sample (rather than looping forever)."""
        empty = 0
        for epoch in count():
            position = -1
            for position, sample in enumerate(self.epoch(epoch, worker, num_workers)):
                yield epoch, position, sample
            empty = empty + 1 if position < 0 else 0
            if empty == MAX_EMPTY_EPOCHS:
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} found no valid sample in {empty} epochs of "
                    f"{len(self.urls)} shards (skipped so far: {self.counter.counts})")

    def prepare(self, item: tuple[int, int, Sample], worker: int) -> dict:
        """Transform and view one sample with its own generator."""
        epoch, position, sample = item
        rng = torch.Generator().manual_seed(
            derive_seed(self.seed, epoch, SAMPLE_RANDOMNESS, self.rank, worker, position))
        return self.view(self.transform(sample, rng), rng)

    def __iter__(self) -> Iterator[dict]:
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        if len(self.urls) < self.world_size * workers:
            raise ValueError(f"{len(self.urls)} shards cannot feed {self.world_size} ranks x "
                             f"{workers} workers; write more shards or use fewer workers")
        worker = logical_worker(worker, workers, self.start, self.batch_size)
        skip = worker_start(self.start, self.batch_size, worker, workers)
        items = islice(self.positioned(worker, workers), skip, None)
        return self.batches(items, worker)

    def batches(self, items: Iterator[tuple[int, int, Sample]], worker: int) -> Iterator[dict]:
        """Collated batches of the decoded ``items``: a batch's samples are decoded first,
        then transformed and viewed one after another (their per-sample code stays warm in
        the CPU's caches instead of running cold between JPEG decodes), then collated."""
        while len(chunk := list(islice(items, self.batch_size))) == self.batch_size:
            yield self.view.collate([self.prepare(item, worker) for item in chunk])


class ShardDataModule(pl.LightningDataModule):
    """Training batches from webdataset shards of our schema (datamodules/schema.py).

    Args:
        shards: list of paths or URLs, or a glob / brace / ``::``-joined pattern.
        resolution: side of the square training images.
        batch_size: samples per batch and process.
        num_workers: DataLoader workers (see the module doc for determinism).
        num_slots: face slots of the view (InstantFamily N).
        seed: seed of shuffles and per-sample randomness.
        shuffle_buffer: sample shuffle buffer size.
        view: the method whose view builds the batch (its registry entry's
            ``MethodSpec.view``).
        random_flip: horizontal flip with probability 0.5.
        random_crop: random instead of centre crop.
        min_faces: samples with fewer faces are skipped and counted (``no_faces``).
        float_on_device: batches leave the DataLoader with uint8 images and become float
            after the transfer to the device (``on_after_batch_transfer``): 4x less data
            through worker queues and host-to-device copies, and no float pass on the CPU.
        view_options: further arguments of the view (its class's docstring), e.g. a
            recipe's augmentation.
        oversample: ``{faces: repeats}`` per epoch (``ShardStream``); None: each once.
        max_people: samples showing more people are skipped (``ShardStream``); 0: any.
    """

    def __init__(self, shards: str | list[str], resolution: int = 512, batch_size: int = 8,
                 num_workers: int = 4, num_slots: int = 4, seed: int = 0,
                 shuffle_buffer: int = 1000, view: str = "instantfamily",
                 random_flip: bool = False, random_crop: bool = False, min_faces: int = 1,
                 float_on_device: bool = False, view_options: dict | None = None,
                 oversample: dict[int, int] | None = None, max_people: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.counter = SkipCounter()
        self.view = build_view(view, num_slots=num_slots, float_batches=not float_on_device,
                               **(view_options or {}))
        check_factors(oversample)  # fails here, not in a worker

    def consumed_samples(self) -> int:
        """Samples this rank consumed before now (``consumed_samples``)."""
        return consumed_samples(self.trainer, self.hparams.batch_size)

    def build_dataset(self, start: int = 0) -> ShardStream:
        """The stream of this process, fast-forwarded by ``start`` samples."""
        hp = self.hparams
        transform = ResizeCrop(hp.resolution, random_crop=hp.random_crop,
                               flip_prob=0.5 if hp.random_flip else 0.0)
        return ShardStream(expand_shards(hp.shards), transform, self.view, hp.batch_size,
                           seed=hp.seed, shuffle_buffer=hp.shuffle_buffer, start=start,
                           counter=self.counter, min_faces=hp.min_faces,
                           decode_side=hp.resolution, oversample=hp.oversample,
                           max_people=hp.max_people)

    def train_dataloader(self) -> DataLoader:
        dataset = self.build_dataset(self.consumed_samples())
        return DataLoader(dataset, batch_size=None, num_workers=self.hparams.num_workers)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """With ``float_on_device``: the uint8 images to float, on the device."""
        return self.view.normalize(batch) if self.hparams.float_on_device else batch

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples by reason so far (all workers), for logging."""
        return self.counter.counts
