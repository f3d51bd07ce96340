"""A folder or URL that ``python -m datamodules.prepare`` wrote, as training reads it: is it
finished, its shard pattern, its ``stats.json``. (Preparation itself is the
``datamodules.prepare`` package; training needs only this.)"""
from __future__ import annotations

import json
from pathlib import Path

from datamodules import storage


def is_prepared(root: str | Path) -> bool:
    """True when ``root`` holds ``prepare``'s output: at least one finished shard (its
    json, the done-marker) and the run's ``stats.json``."""
    return storage.exists(storage.join(root, "stats.json")) and \
        bool(storage.glob(storage.join(root, "shard-*.json")))


def prepared_shards(root: str | Path, mode: str = "images") -> str:
    """The shard pattern of a folder or URL written by ``prepare <mode>``; a clear error
    when it is not one (an unfinished run: run ``prepare`` again, it resumes)."""
    if not is_prepared(root):
        raise FileNotFoundError(
            f"{root} holds no finished `prepare` output (shard-*.json and stats.json): run "
            f"`python -m datamodules.prepare {mode} --input ... --output {root}` (it resumes "
            f"an interrupted run)")
    return storage.join(root, "shard-*.tar")


def prepared_stats(root: str | Path) -> dict:
    """``stats.json`` of a prepared folder (kept, rejected by reason, faces per image)."""
    return json.loads(storage.read_text(storage.join(root, "stats.json")))
