"""Read back what a wandb run logged offline, from its ``run-<id>.wandb`` file and its
``files/`` folder: no network, no wandb server.

The ``.wandb`` file is a LevelDB-style log (the layout of wandb's ``datastore``): a 7-byte
file header (ident ``:W&B``, magic 0xBEE1 little-endian, version 0), then 32 KiB blocks of
records, each with a 7-byte header (CRC-32 of the type byte and the data, little-endian
uint32; data length, uint16; type: 1 full, 2 first, 3 middle, 4 last); fewer than 7 bytes
left in a block are zero padding. A full record, or a first..last chain, is one serialized
``wandb.proto.wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<IHB")  # crc32, length, type
FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list:
    """Every ``Record`` of a ``.wandb`` file, in order; a checksum mismatch or a broken
    chain raises ValueError (this is a test helper: a damaged file should fail the test)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a wandb log (header {data[:7]!r})")
    records, pending, pos = [], None, FILE_HEADER.size
    while pos + HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER.size:  # block trailer
            pos += left
            continue
        crc, length, kind = HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER.size:pos + HEADER.size + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: checksum mismatch at byte {pos}")
        pos += HEADER.size + length
        if kind in (FULL, FIRST) and pending is not None:
            raise ValueError(f"{path}: record chain broken at byte {pos}")
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = None
    return records


def _key(item) -> str:
    """``a/b`` of a config, history or summary item (``key`` or its ``nested_key`` path)."""
    return item.key or "/".join(item.nested_key)


def _set(tree: dict, path: list[str], value) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


@dataclass
class OfflineRun:
    """What one offline run holds: run fields, config, history rows, summary, files."""

    folder: Path  # the ``offline-run-*`` folder
    run_id: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # top-level key -> value (nested dicts)
    history: list[dict] = field(default_factory=list)  # one dict per logged step
    summary: dict = field(default_factory=dict)  # nested, as in the UI's run summary
    artifacts: dict = field(default_factory=dict)  # name -> {entry path: local file}

    def history_keys(self) -> set[str]:
        """Every top-level key some history row logged."""
        return {key for row in self.history for key in row}

    def values(self, key: str) -> list:
        """The logged values of ``key``, in step order."""
        return [row[key] for row in self.history if key in row]

    def media(self, value: dict) -> Path:
        """The file a logged media value (image, table) points to, under ``files/``."""
        return self.folder / "files" / value["path"]

    def table(self, key: str) -> dict:
        """The ``wandb.Table`` logged as ``key``: ``{"columns", "data"}`` with media cells
        as dicts (``path``, ``caption``, ...), plus ``files``: each media path -> its local
        file. A table is logged as a ``run_table`` artifact holding ``<key>.table.json``
        and its media (the run's own ``files/media/table`` copy is a preview without
        them); offline, the artifact's files wait in wandb's staging folder
        (``$WANDB_DATA_DIR/artifacts/staging``) until ``wandb sync``."""
        name = f"{key}.table.json"
        for entries in self.artifacts.values():
            if name in entries:
                table = json.loads(Path(entries[name]).read_text())
                return {**table, "files": {p: Path(f) for p, f in entries.items()}}
        raise KeyError(f"no table {key!r} among the run's artifacts {list(self.artifacts)}")


def finished_records(path: Path, wait: float) -> list:
    """The records of a finished run's log: wandb's service may still be writing it when
    ``run.finish()`` has returned, so read until its last record is the ``exit`` record,
    for at most ``wait`` seconds. A record caught half written fails its checksum: read
    again; the file's damage is reported only if it stays so until the deadline."""
    deadline = time.monotonic() + wait
    while True:
        try:
            records, damage = read_records(path), None
        except ValueError as err:  # a record being written, or a damaged file
            records, damage = [], err
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        if time.monotonic() > deadline:
            if damage is not None:
                raise damage
            raise TimeoutError(f"{path}: no exit record after {wait} s (run not finished)")
        time.sleep(0.2)


def read_run(folder: str | Path, wait: float = 30.0) -> OfflineRun:
    """An ``offline-run-*`` folder (or the ``wandb/`` folder holding exactly one) read back,
    once its run has finished (``finished_records``)."""
    folder = Path(folder)
    if not list(folder.glob("run-*.wandb")):
        runs = sorted(folder.glob("offline-run-*"))
        if len(runs) != 1:
            raise ValueError(f"{folder}: {len(runs)} offline runs, expected one")
        folder = runs[0]
    (log,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for record in finished_records(log, wait):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.group, run.job_type = r.run_id, r.run_group, r.job_type
            run.tags = list(r.tags)
            _update_config(run.config, r.config)
        elif kind == "config":
            _update_config(run.config, record.config)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            run.history.append(row)
        elif kind == "artifact":
            run.artifacts[record.artifact.name] = {
                entry.path: entry.local_path for entry in record.artifact.manifest.contents}
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, list(item.nested_key) or [item.key],
                     json.loads(item.value_json))
    return run


def _update_config(config: dict, record) -> None:
    for item in record.update:
        _set(config, list(item.nested_key) or [item.key], json.loads(item.value_json))
    for item in record.remove:
        config.pop(_key(item), None)
