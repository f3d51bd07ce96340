"""benchmarks/prepare_engine.py refuses a run whose shards cannot give a steady rate (it is
timed after each worker's first shard) before it starts workers or writes photos."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("images", [8, 16])  # fewer shards than workers, and as many
def test_no_more_shards_than_workers_is_refused_up_front(images: int, capsys,
                                                          monkeypatch) -> None:
    from benchmarks import prepare_engine

    monkeypatch.setattr(prepare_engine, "connect", lambda *_: pytest.fail("workers started"))
    with pytest.raises(SystemExit) as exit_info:
        prepare_engine.main(["--images", str(images), "--per-shard", "8", "--workers", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"make {images // 8} shards" in err and "more shards than --workers (2)" in err
