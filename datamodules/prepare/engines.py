"""Engines that run ``prepare``'s shard tasks: ``local`` (a process pool over this machine's
cores, the default) and ``ray`` (a Ray cluster, ``pip install -e ".[scale]"``). Both call
the same ``run(task, config)`` per output shard and yield its stats as shards finish, so
they write the same shards.

Ray: the cluster is ``RAY_ADDRESS`` when set (``ray start --head`` on a head node, workers
joined to it), else a local Ray started here with one CPU per worker. Each worker is an
actor holding its own copy of the run's config: its annotator builds its models once, on
the first input (never per shard), on the actor's GPU when it was given one
(``gpus_per_worker``), and takes the shard's inputs in batches (``batch_size`` of the
config: ``datamodules.prepare.run``). Tasks (one output shard from one input shard) go
to whichever actor is free, so workers never coordinate; a worker that dies mid-shard is
restarted and its shard redone from the start (Ray's actor restart and task retry), and
the shard it was writing never appears, as every shard is written atomically
(``datamodules.storage``).

Workers must import this package (installed on every node, or shipped with
``ray.init(runtime_env=...)``) and reach ``--output``: a URL (``s3://``...) or a folder
every node mounts.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import replace
from functools import partial
from typing import Callable, Iterator

import torch

log = logging.getLogger(__name__)
RETRIES = 3  # restarts of a dead worker, and retries of the shard it held
_WORKER: tuple[Callable, object] | None = None  # a local pool worker's (run, config)


def _init_local(run: Callable, config) -> None:
    """Pool worker: one intra-op thread per process (the pool uses the cores)."""
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = (run, config)


def _run_local(task) -> dict:
    run, config = _WORKER
    return run(task, config)


def run_local(run: Callable, config, tasks: list, workers: int | None = None) -> Iterator[dict]:
    """``run(task, config)`` for every task on ``workers`` processes of this machine
    (default: all cores; <= 1: in this process); yields the results as shards finish."""
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        yield from (run(task, config) for task in tasks)
        return
    # fork: workers start at once with the imports done (as DataLoader workers do); each
    # runs its own copy of the annotator (models are built on first use)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers, _init_local, (run, config)) as pool:
        yield from pool.imap_unordered(_run_local, tasks)
        pool.close()  # workers exit by themselves; the with block kills them only on error
        pool.join()


class ShardWorker:
    """One Ray actor: runs ``run(task, config)`` for the tasks it is sent."""

    def __init__(self, run: Callable, config):
        import ray

        torch.set_num_threads(1)  # one CPU per actor; the cluster gives the parallelism
        if ray.get_gpu_ids() and hasattr(config, "annotator"):
            config = replace(config, annotator=replace(config.annotator, device="cuda"))
        self.run, self.config = run, config

    def __call__(self, task):
        return self.run(task, self.config)


def connect(workers: int | None) -> None:
    """Join ``RAY_ADDRESS``'s cluster, or start a local Ray with ``workers`` CPUs (default:
    all cores); a Ray already initialised in this process is used as it is."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address, num_cpus=None if address else workers,
             include_dashboard=False, log_to_driver=False)


def run_on_ray(run: Callable, config, tasks: list, workers: int | None = None,
               gpus_per_worker: float = 0) -> Iterator[dict]:
    """``run(task, config)`` for every task on ``workers`` Ray actors (default: the
    cluster's CPUs); yields the results as shards finish."""
    import ray
    from ray.util import ActorPool

    connect(workers)
    workers = max(1, min(workers or int(ray.cluster_resources().get("CPU", 1)), len(tasks)))
    actor = ray.remote(ShardWorker).options(num_cpus=1, num_gpus=gpus_per_worker,
                                            max_restarts=RETRIES, max_task_retries=RETRIES)
    shared = ray.put(config)  # sent once, not once per actor
    pool = ActorPool([actor.remote(run, shared) for _ in range(workers)])
    log.info("ray: %d shards on %d workers", len(tasks), workers)
    yield from pool.map_unordered(lambda worker, task: worker.__call__.remote(task), tasks)


def engine(name: str, gpus_per_worker: float = 0) -> Callable:
    """The engine called ``name`` (``local`` | ``ray``) as ``(run, config, tasks, workers)
    -> stats per shard``."""
    if name == "ray":
        return partial(run_on_ray, gpus_per_worker=gpus_per_worker)
    if name == "local":
        return run_local
    raise ValueError(f"unknown engine {name!r}: local or ray")
