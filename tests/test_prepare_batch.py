"""Batched annotation (``--batch-size``): MTCNN's batched detection finds the faces it finds
one image at a time, and ``prepare`` in batches keeps, rejects and counts every input as it
does one at a time, on real photos of mixed sizes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from datamodules.prepare import PrepareConfig, main, prepare
from datamodules.prepare.annotate import SampleAnnotator
from datamodules.prepare.sources import plan_images
from ldm_ext.face import MTCNNDetector, detect_batch
from ldm_ext.perception.annotator import Filters

pytestmark = pytest.mark.usefixtures("one_thread")


def t1() -> Image.Image:
    import insightface

    return Image.open(os.path.join(os.path.dirname(insightface.__file__), "data", "images",
                                   "t1.jpg")).convert("RGB")


def astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


def test_batched_mtcnn_finds_the_faces_of_one_at_a_time():
    """Two 512-px photos (one size: one batch), the 1280x886 group photo and a rotated copy
    (another), a face-less 96-px image: same faces, boxes within float tolerance."""
    detector = MTCNNDetector(min_score=0.0, batch_pixels=1 << 22)  # no split here
    images = [np.asarray(im) for im in (astronaut(), t1(), astronaut().rotate(6),
                                        t1().rotate(-3), Image.new("RGB", (96, 96), "tan"))]
    single = [detector.detect(image) for image in images]
    batched = detector.detect_batch(images)
    assert [len(f) for f in batched] == [len(f) for f in single] and len(single[1]) >= 6
    assert len(single[0]) >= 1 and len(single[4]) == 0
    for one, many in zip(single, batched):
        np.testing.assert_allclose(many.boxes, one.boxes, atol=1e-2)
        np.testing.assert_allclose(many.landmarks, one.landmarks, atol=1e-2)
        np.testing.assert_allclose(many.scores, one.scores, atol=1e-5)
        torch.testing.assert_close(many.crops, one.crops, atol=2 / 255, rtol=0)  # 1 level


class Loop:
    """A detector without ``detect_batch``: ``detect_batch`` detects one image at a time."""

    name, crop_size = "loop", 160

    def __init__(self):
        self.seen: list[tuple[int, ...]] = []

    def detect(self, image):
        self.seen.append(image.shape)
        return MTCNNDetector().detect(image)


def test_batch_pixels_split_a_size_into_calls(monkeypatch):
    """On the CPU at most 2**20 pixels per MTCNN call: five 512x512 frames in 4 + 1."""
    detector, calls = MTCNNDetector(), []
    detect = detector.mtcnn.detect
    monkeypatch.setattr(detector.mtcnn, "detect",
                        lambda images, **kw: calls.append(len(images)) or detect(images, **kw))
    frames = [np.asarray(astronaut().rotate(i)) for i in range(5)] + [np.asarray(t1())]
    assert [len(f) for f in detector.detect_batch(frames)] == [1] * 5 + [6]
    assert sorted(calls) == [1, 1, 4]  # t1 (1.1 M pixels) alone


def test_detectors_without_a_batch_detect_one_image_at_a_time():
    loop, images = Loop(), [np.asarray(astronaut()), np.asarray(t1())]
    assert [len(f) for f in detect_batch(loop, images)] == [1, 6]
    assert loop.seen == [images[0].shape, images[1].shape]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos of two sizes (512 px, 1280x886) with rotated copies, an image too small to
    detect in (MTCNN raises: an ``error``), a face-less one, a corrupt file, a blank caption
    (the annotator names the people)."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        astronaut().rotate(3 * i).save(folder / f"a{i}.png")
        t1().rotate(-2 * i).save(folder / f"t{i}.jpg", quality=95)
    Image.fromarray(np.stack([skimage.data.camera()] * 3, -1)).save(folder / "camera.png")
    Image.new("RGB", (8, 8), (90, 90, 90)).save(folder / "tiny.png")
    Image.new("RGB", (96, 96), (200, 180, 160)).save(folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    astronaut().save(folder / "muted.png")
    (folder / "muted.txt").write_text("  ")
    return folder


def run(photos: Path, out: Path, batch_size: int) -> dict:
    annotator = SampleAnnotator("mtcnn", pose="faces", segmenter="ellipse", characters="pose-hull",
                                filters=Filters(min_face_size=20))
    config = PrepareConfig(str(out), annotator, previews=0, batch_size=batch_size)
    return prepare(plan_images(str(photos), 6), config, workers=1)


def test_prepare_in_batches_keeps_and_counts_every_input_as_one_at_a_time(
        photos, tmp_path, shard_samples):
    """Two shards of six inputs; batches of 4 cut the shards unevenly. The tiny image makes
    the batched detection raise: that batch is annotated one input at a time, so the error
    is counted against the tiny image alone."""
    one = run(photos, tmp_path / "one", 1)
    assert one["kept"] == 8 and one["rejected"] == {
        "bad_image": 1, "error": 1, "too_few_faces": 1}, one
    assert {e["input"]: e["reason"] for e in one["rejected_inputs"]}["tiny.png"] == "error"
    for batch_size in (4, 16):
        assert run(photos, tmp_path / f"b{batch_size}", batch_size) == one
        assert (tmp_path / f"b{batch_size}" / "stats.json").read_text() == \
            (tmp_path / "one" / "stats.json").read_text()
    singles, batched = shard_samples(tmp_path / "one"), shard_samples(tmp_path / "b16")
    assert sorted(batched) == sorted(singles) and len(singles) == 8
    for key, sample in batched.items():
        np.testing.assert_allclose(sample.boxes, singles[key].boxes, atol=1e-2)
        assert sample.caption == singles[key].caption
        assert np.mean(sample.masks != singles[key].masks) < 1e-3  # box edges may move a pixel
    assert batched["muted"].caption == "a photo of one person"


def test_batch_size_below_one_is_a_clear_error(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["images", "--input", str(photos), "--output", str(tmp_path), "--batch-size", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--batch-size" in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, size", [([], 1), (["--gpus-per-worker", "1"], 16),
                                         (["--batch-size", "4"], 4)])
def test_default_batch_size_batches_on_gpu_workers_only(argv, size):
    """Batches pay on a GPU (one launch per pyramid scale), not on a CPU (0.98-1.0x)."""
    from datamodules.prepare.cli import _parser, default_batch_size

    args = _parser().parse_args(["images", "--input", "in", "--output", "out", *argv])
    assert default_batch_size(args) == size
