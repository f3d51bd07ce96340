"""prepare on awkward inputs: a grown or shrunk input folder, a killed run's leftovers,
rejected inputs by name, 16-bit PNGs and dotted file names."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from datamodules.prepare import PrepareConfig, prepare
from datamodules.prepare.annotate import SampleAnnotator
from datamodules.prepare.resume import InputChanged
from datamodules.prepare.sources import decode_image, plan_images
from ldm_ext.perception.annotator import Filters

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def annotator() -> SampleAnnotator:
    return SampleAnnotator("mtcnn", pose="faces", segmenter="ellipse", characters="pose-hull",
                           filters=Filters(min_score=0.95, min_face_size=20))


def face(angle: float = 0) -> Image.Image:
    return Image.fromarray(skimage.data.astronaut()).resize((200, 200)).rotate(angle)


@pytest.fixture
def photos(tmp_path) -> Path:
    """One face per photo, a corrupt file and a blank image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    face().save(folder / "a.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("RGB", (64, 64), (200, 180, 160)).save(folder / "blank.png")
    return folder


def run(photos: Path, out: Path, annotator: SampleAnnotator, per_shard: int = 10) -> dict:
    return prepare(plan_images(str(photos), per_shard), PrepareConfig(str(out), annotator),
                   workers=1)


def test_rejected_inputs_are_listed_by_name(photos, annotator, tmp_path):
    stats = run(photos, tmp_path / "out", annotator)
    assert stats["rejected_inputs"] == [{"input": "blank.png", "reason": "too_few_faces"},
                                        {"input": "broken.jpg", "reason": "bad_image"}]
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


def test_added_photos_are_prepared_into_new_shards(photos, annotator, tmp_path, capsys,
                                                   shard_samples):
    """Photos added after a run (one sorted between the old ones) get their own new
    shard; the finished shard stays as it is and stats.json counts both."""
    out = tmp_path / "out"
    run(photos, out, annotator)
    first = (out / "shard-000000.tar").read_bytes()
    face(5).save(photos / "b_new.png")
    face(-5).save(photos / "0_new.png")
    capsys.readouterr()
    stats = run(photos, out, annotator)
    assert "prepared 2 inputs in 1 shards (1 already done)" in capsys.readouterr().out
    assert (out / "shard-000000.tar").read_bytes() == first
    assert sorted(shard_samples(out)) == ["0_new", "a", "b_new"]
    assert stats["shards"] == 2 and stats["kept"] == 3 and stats["inputs"] == 5
    assert run(photos, out, annotator) == stats  # nothing new: nothing redone


def test_removed_photos_stop_the_run_naming_them(photos, annotator, tmp_path):
    out = tmp_path / "out"
    run(photos, out, annotator, per_shard=2)
    (photos / "a.png").unlink()
    with pytest.raises(InputChanged, match=r"a\.png.*--output"):
        run(photos, out, annotator, per_shard=2)
    from ldm_ext.cli import UserError

    assert issubclass(InputChanged, UserError)  # run_cli: one line, exit 2


def test_a_killed_runs_temporary_file_is_removed(photos, annotator, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = 2 ** 22 + 1  # above Linux's largest pid: no such process
    stale = out / f"shard-000000.tar.{dead}.tmp"
    stale.write_bytes(b"half a tar")
    run(photos, out, annotator)
    assert not list(out.glob("*.tmp"))


def test_16_bit_png_keeps_its_tones():
    grey = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = io.BytesIO()
    Image.fromarray(grey).save(data, format="PNG")
    image = decode_image(data.getvalue(), max_side=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image[..., 0], grey / 257, atol=0.51)


def test_dotted_file_names_are_read_back(photos, annotator, tmp_path, shard_samples):
    """webdataset cuts keys at the first dot: 'a.v2.png' is stored as key 'a_v2'."""
    os.rename(photos / "a.png", photos / "a.v2.png")
    run(photos, tmp_path / "out", annotator)
    assert list(shard_samples(tmp_path / "out")) == ["a_v2"]


def test_pending_reads_older_markers_and_parquet_ranges(tmp_path):
    """A shard json without ``sources`` (written before shards listed them) holds the
    planned task of its number; parquet rows re-cut by another shard size are a change."""
    from datamodules.prepare.resume import pending
    from datamodules.prepare.sources import Task

    (tmp_path / "shard-000000.tar").write_bytes(b"")
    (tmp_path / "shard-000000.json").write_text(json.dumps({"inputs": 2, "kept": 2}))
    tasks = [Task(0, "parquet", "x.parquet", ((0, 2),)), Task(1, "parquet", "x.parquet",
                                                              ((2, 3),))]
    assert pending(tasks, tmp_path) == ([tasks[1]], 1)
    (tmp_path / "shard-000000.json").write_text(json.dumps({"sources": ["rows 0-2"]}))
    with pytest.raises(InputChanged, match="rows 0-2"):
        pending([Task(0, "parquet", "x.parquet", ((0, 3),))], tmp_path)
