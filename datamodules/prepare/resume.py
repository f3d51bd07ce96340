"""What a ``prepare`` run still has to do in its output folder: resume, grown inputs and a
killed run's leftovers.

A finished shard is ``shard-NNNNNN.tar`` plus ``shard-NNNNNN.json``, its stats, written last
as the done-marker; the json lists the inputs the shard holds (``sources``, named by
``sources.input_name``). A run prepares only the inputs no finished shard holds: the
shards of an interrupted run keep their numbers (it resumes to the same files), inputs
added since go into new shards numbered after the finished ones. When inputs of finished
shards are gone (removed or renamed files, a parquet re-cut by another
``--samples-per-shard``) the run stops with ``InputChanged`` instead of mixing two versions
of the data. A file changed in place under the same name is not noticed.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from datamodules import storage
from datamodules.prepare.sources import Task, input_name
from ldm_ext.cli import InputError


class InputChanged(InputError):
    """Inputs of finished shards are gone from the input; the message says how to re-run
    (a user error: the command line prints it in one line and exits 2)."""


def shard_path(output: str | Path, index: int, suffix: str) -> str:
    """``output/shard-NNNNNN.<suffix>``, a path or a URL as ``output`` is."""
    return storage.join(output, f"shard-{index:06d}.{suffix}")


def task_sources(task: Task) -> list[str]:
    """The names of the inputs ``task`` reads (stored in its shard's json)."""
    return [input_name(task, item) for item in task.items]


def finished(output: str | Path, tasks: list[Task]) -> dict[int, list[str]]:
    """Shard index -> the inputs it holds, for every finished shard in ``output``. A shard
    written before shards listed their inputs holds the planned task of its number."""
    planned = {t.index: t for t in tasks}
    tars = set(storage.glob(storage.join(output, "shard-*.tar")))  # one listing, not a
    markers = storage.read_all(storage.glob(storage.join(output, "shard-*.json")))  # request
    done = {}  # per shard on an object store
    for marker, text in markers.items():
        number = Path(marker).stem.removeprefix("shard-")
        if number.isdigit() and shard_path(output, int(number), "tar") in tars:
            index = int(number)
            sources = json.loads(text).get("sources")
            legacy = task_sources(planned[index]) if index in planned else []
            done[index] = legacy if sources is None else sources
    return done


def pending(tasks: list[Task], output: str | Path) -> tuple[list[Task], int]:
    """The part of ``tasks`` no finished shard in ``output`` holds, each task cut to its
    unprepared inputs; and the number of finished shards. Raises ``InputChanged`` when
    finished shards hold inputs that ``tasks`` no longer has."""
    done = finished(output, tasks)
    held = {name for names in done.values() for name in names}
    gone = sorted(held - {name for task in tasks for name in task_sources(task)})
    if gone:
        source = tasks[0].source if tasks else "the input"
        raise InputChanged(
            f"{output} holds {len(gone)} inputs that are no longer in {source} (e.g. "
            f"{', '.join(gone[:3])}): the input changed; to prepare it as it is now, use "
            f"a new --output or delete {output}")
    left = [replace(t, items=tuple(i for i in t.items if input_name(t, i) not in held))
            for t in tasks]
    return _renumber([t for t in left if t.items], set(done)), len(done)


def _renumber(tasks: list[Task], taken: set[int]) -> list[Task]:
    """A task keeps its number unless a finished shard has it; those get numbers after
    every number in use, in plan order."""
    after = max(taken | {t.index for t in tasks}, default=-1) + 1
    out = []
    for task in tasks:
        if task.index in taken:
            task, after = replace(task, index=after), after + 1
        out.append(task)
    return out


def remove_leftovers(output: str | Path) -> None:
    """Delete ``shard-*.tar.<pid>.tmp`` files whose writer is gone (a killed run); those of
    a live process (another run writing now) stay. An object store has none: an upload
    never committed is not a file (``datamodules.storage``)."""
    if storage.is_remote(output):
        return
    for tmp in Path(output).glob("shard-*.tar.*.tmp"):
        pid = tmp.name.split(".")[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True
