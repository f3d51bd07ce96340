"""tests/wandb_offline.py, the reader of offline runs: a record caught half written (wandb's
service still writing after ``run.finish()``) is read again, a damaged file still fails."""
from __future__ import annotations

import threading
import time
import zlib

import pytest
from wandb.proto import wandb_internal_pb2
from wandb_offline import FILE_HEADER, FULL, HEADER, finished_records


def log_bytes(*records) -> bytes:
    """A ``.wandb`` log of ``records``, each a full record in the first block."""
    data = FILE_HEADER.pack(b":W&B", 0xBEE1, 0)
    for record in records:
        body = record.SerializeToString()
        crc = zlib.crc32(body, zlib.crc32(bytes([FULL])))
        data += HEADER.pack(crc, len(body), FULL) + body
    return data


def records():
    run, done = wandb_internal_pb2.Record(), wandb_internal_pb2.Record()
    run.run.run_id = "abc"
    done.exit.exit_code = 0
    return run, done


def test_a_record_caught_half_written_is_read_again(tmp_path) -> None:
    whole, path = log_bytes(*records()), tmp_path / "run-abc.wandb"
    path.write_bytes(whole[:-3])  # the exit record's last bytes not written yet

    def finish():
        time.sleep(0.3)
        path.write_bytes(whole)

    writer = threading.Thread(target=finish)
    writer.start()
    read = finished_records(path, wait=10)
    writer.join()
    assert [r.WhichOneof("record_type") for r in read] == ["run", "exit"]


def test_a_file_that_stays_damaged_fails(tmp_path) -> None:
    whole, path = bytearray(log_bytes(*records())), tmp_path / "run-abc.wandb"
    whole[FILE_HEADER.size + HEADER.size] ^= 0xFF  # the first record's first byte
    path.write_bytes(bytes(whole))
    with pytest.raises(ValueError, match="checksum mismatch"):
        finished_records(path, wait=0.5)
