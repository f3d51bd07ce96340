"""Data spine: demo shards, the webdataset stream (determinism, resume, ranks, workers) and
bad samples skipped and counted. Transforms: test_transforms.py; views: test_views.py."""
from __future__ import annotations

import io
import json
import pickle
import re
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import webdataset as wds

from datamodules.demo import WHO, DemoDataModule, demo_sample, main, write_demo_shards
from datamodules.codec import decode_sample, encode_sample
from datamodules.schema import MASK_CHAR, BadSample, Sample, validate
from datamodules.shards import (ShardDataModule, ShardStream, expand_shards, logical_worker,
                                worker_start)
from datamodules.transforms import ResizeCrop
from datamodules.views import InstantFamilyView
from ldm_ext.perception.pose import detector_box

R, N, B = 64, 4, 4  # resolution, face slots, batch size


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return write_demo_shards(tmp_path_factory.mktemp("demo"), num_samples=20, size=80,
                             samples_per_shard=5, seed=0)


@pytest.fixture(scope="module")
def samples(shards) -> dict[str, Sample]:
    raw = wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples())
    return {r["__key__"]: validate(decode_sample(r)) for r in raw}


def datamodule(shards, **kwargs) -> ShardDataModule:
    args = dict(resolution=R, batch_size=B, num_workers=0, num_slots=N, seed=0,
                shuffle_buffer=8)
    return ShardDataModule(shards, **{**args, **kwargs})


def take(iterable, n: int) -> list:
    return list(islice(iter(iterable), n))


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k], k


# --- demo data -------------------------------------------------------------------------

def test_demo_shards_are_exact_and_deterministic(shards, samples, tmp_path):
    again = write_demo_shards(tmp_path, num_samples=20, size=80, samples_per_shard=5, seed=0)
    assert [Path(p).read_bytes() for p in again] == [Path(p).read_bytes() for p in shards]
    assert len(samples) == 20 and 1 <= min(s.num_faces for s in samples.values())
    assert {s.num_faces for s in samples.values()} == {1, 2, 3, 4}
    for s in samples.values():
        assert s.image.shape == (80, 80, 3) and s.crops.shape[1:] == (3, 160, 160)
        assert ((s.masks & MASK_CHAR) > 0).any(axis=(1, 2)).all()  # prepare's fallbacks
        areas = np.prod(s.boxes[:, 2:] - s.boxes[:, :2], axis=1)
        assert (np.diff(areas) <= 0).all()  # largest first
        assert ((s.landmarks >= s.boxes[:, None, :2]) & (s.landmarks <= s.boxes[:, None, 2:])).all()
        assert (s.landmarks[:, 0, 0] < s.landmarks[:, 1, 0]).all()  # image-left eye first
        for f, p in enumerate(s.face_person):  # the box a detector gives for its person
            np.testing.assert_allclose(s.boxes[f], detector_box(s.people[p]), atol=1e-3)
        assert s.caption.startswith(f"a photo of {WHO[s.num_faces]} ")
    other = write_demo_shards(tmp_path / "seed1", num_samples=5, size=80, samples_per_shard=5,
                              seed=1)
    assert Path(other[0]).read_bytes() != Path(shards[0]).read_bytes()


def test_demo_faces_are_drawn_at_their_boxes(samples):
    """Eyes are drawn at the eye landmarks (darker than the cheek inside the same box)."""
    def luma(pixel: np.ndarray) -> float:
        return float(pixel.astype(float) @ [0.299, 0.587, 0.114])

    big = [s for s in samples.values() if s.num_faces <= 2]
    assert big
    for s in big:
        for (x0, y0, x1, y1), marks in zip(s.boxes, s.landmarks):
            cheek = luma(s.image[round(y0 + 0.6 * (y1 - y0)), round(x0 + 0.25 * (x1 - x0))])
            for x, y in np.round(marks[:2]).astype(int):  # darkest pixel within 1 px
                assert min(luma(p) for p in s.image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)) \
                    < cheek - 40


def test_demo_cli(tmp_path):
    main(["--out", str(tmp_path), "--num-samples", "3", "--size", "48",
          "--samples-per-shard", "2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-00000.tar", "demo-00001.tar",
                                                          "demo.json"]


# --- batches ---------------------------------------------------------------------------

def test_batch_shapes_dtypes_ranges(shards, samples):
    batch = take(datamodule(shards).train_dataloader(), 1)[0]
    assert batch["pixel_values"].shape == (B, 3, R, R) and batch["control"].shape == (B, 3, R, R)
    assert batch["face_crops"].shape == (B, N, 3, 160, 160)
    assert batch["face_boxes"].shape == (B, N, 4) and batch["face_valid"].shape == (B, N)
    for k in ("pixel_values", "control", "face_crops", "face_boxes"):
        assert batch[k].dtype == torch.float32, k
    assert batch["face_valid"].dtype == torch.bool
    assert -1 <= batch["pixel_values"].min() < 0 < batch["pixel_values"].max() <= 1
    assert 0 <= batch["control"].min() and batch["control"].max() <= 1
    assert batch["control"].amax() > 0.5  # something is drawn
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == B
    valid = batch["face_valid"]
    for i, key in enumerate(batch["key"]):
        assert batch["caption"][i] == samples[key].caption
        assert valid[i].sum() == min(N, samples[key].num_faces)
        assert valid[i, : valid[i].sum()].all()  # filled slots first
    crops, boxes = batch["face_crops"], batch["face_boxes"]
    assert crops[valid].min() >= -1 and crops[valid].max() <= 1 and crops[valid].std() > 0.1
    assert (crops[~valid] == 0).all() and (boxes[~valid] == 0).all()
    assert (boxes[valid] >= 0).all() and (boxes[valid] <= 1).all()
    assert (boxes[valid][:, 2:] > boxes[valid][:, :2]).all()


def test_demo_datamodule_writes_once_per_parameters(tmp_path):
    def demo(size: int) -> DemoDataModule:
        return DemoDataModule(root=str(tmp_path), num_samples=6, size=size, samples_per_shard=3,
                              resolution=32, batch_size=2)

    dm = demo(48)
    batch = take(dm.train_dataloader(), 1)[0]
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and dm.hparams.num_workers == 0
    written = [Path(p).read_bytes() for p in dm.hparams.shards]
    mtimes = [Path(p).stat().st_mtime_ns for p in dm.hparams.shards]
    demo(48).prepare_data()
    assert [Path(p).stat().st_mtime_ns for p in dm.hparams.shards] == mtimes
    demo(40).prepare_data()  # same root, other images: rewritten, not reused
    assert [Path(p).read_bytes() for p in dm.hparams.shards] != written


def test_same_seed_same_batches(shards):
    a, b = (take(datamodule(shards).train_dataloader(), 3) for _ in range(2))
    assert_same_batches(a, b)
    c = take(datamodule(shards, seed=1).train_dataloader(), 3)
    assert [x["key"] for x in a] != [x["key"] for x in c]


def test_start_equals_skipping(shards):
    """Infinite epochs, each a fresh shuffle of all samples; start=k == the stream minus k."""
    dm = datamodule(shards, batch_size=1, random_flip=True, random_crop=True)
    stream = take(dm.build_dataset(start=0), 27)
    keys = [b["key"][0] for b in stream]
    assert len(set(keys[:20])) == 20 and set(keys[20:]) <= set(keys[:20])
    assert keys[20:27] != keys[:7]  # epoch 1 is reshuffled
    assert_same_batches(take(dm.build_dataset(start=7), 20), stream[7:])


def test_workers_are_deterministic_and_resumable(shards):
    """Two workers read disjoint shards; resuming from k batches gives batches k, k+1, ..."""
    dm = datamodule(shards, num_workers=2, batch_size=2, random_flip=True)
    first, again = (take(dm.train_dataloader(), 6) for _ in range(2))
    assert_same_batches(first, again)
    loader = torch.utils.data.DataLoader(dm.build_dataset(start=3 * 2), batch_size=None,
                                         num_workers=2)
    assert_same_batches(take(loader, 3), first[3:])


def test_ranks_read_disjoint_shards_covering_the_epoch(shards, samples):
    dm = datamodule(shards)  # 4 shards of 5 samples
    ranks = [ShardStream(shards, ResizeCrop(R), InstantFamilyView(N), B, rank=r, world_size=2,
                         counter=dm.counter) for r in range(2)]
    keys = [[s.key for s in stream.epoch(3)] for stream in ranks]
    assert len(keys[0]) == len(keys[1]) == 10 and sorted(keys[0] + keys[1]) == sorted(samples)


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_start_matches_round_robin(workers):
    """Worker w made batches w, w + W, ...; a new DataLoader's worker 0 continues the
    stream that owns the next batch."""
    for batches in range(10):
        taken = [0] * workers
        for i in range(batches):
            taken[i % workers] += 2
        assert [worker_start(2 * batches, 2, w, workers) for w in range(workers)] == taken
        assert logical_worker(0, workers, 2 * batches, 2) == batches % workers


class Recorder(pl.LightningModule):
    """Records the keys of every training batch."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.keys: list[str] = []

    def training_step(self, batch, batch_idx):
        self.keys += batch["key"]
        return self.weight * batch["pixel_values"].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_resume_sees_the_uninterrupted_stream(shards, tmp_path):
    def fit(max_steps: int, ckpt: str | None = None) -> Recorder:
        trainer = pl.Trainer(max_steps=max_steps, accumulate_grad_batches=2, accelerator="cpu",
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path)
        model = Recorder()
        trainer.fit(model, datamodule=datamodule(shards, batch_size=2), ckpt_path=ckpt)
        if ckpt is None:
            trainer.save_checkpoint(tmp_path / f"{max_steps}.ckpt")
        return model

    full = fit(3).keys
    assert len(full) == 3 * 2 * 2
    assert fit(1).keys == full[:4]
    assert fit(3, str(tmp_path / "1.ckpt")).keys == full[4:]


# --- bad samples -----------------------------------------------------------------------

def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def corrupt(raw: dict, reason: str) -> dict:
    """A copy of the encoded sample ``raw`` broken so that it must be skipped for ``reason``."""
    raw, faces = dict(raw), json.loads(raw["faces.json"])
    f = len(faces["boxes"])
    if reason == "missing_key":
        del raw["crops.npy"]
    elif reason == "bad_image":
        raw["jpg"] = b"\xff\xd8 not a jpeg"
    elif reason == "nan":
        raw["crops.npy"] = npy(np.full((f, 3, 160, 160), np.nan, np.float32))
    elif reason == "bad_npy":
        raw["crops.npy"] = npy(np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    elif reason == "box_outside":
        faces["boxes"][0] = [-40.0, 5.0, -10.0, 20.0]  # wholly left of the image
    elif reason == "count_mismatch":
        faces["scores"] = faces["scores"][1:] + [1.0, 1.0]
    elif reason == "empty_caption":
        raw["txt"] = b"  "
    elif reason == "bad_json":
        raw["pose.json"] = b"{not json"
    raw["faces.json"] = json.dumps(faces).encode()
    return raw


REASONS = ["missing_key", "bad_image", "nan", "bad_npy", "box_outside", "count_mismatch",
           "empty_caption", "bad_json"]


@pytest.fixture()
def bad_shards(tmp_path) -> tuple[list[str], list[str]]:
    """Two shards mixing good and corrupt samples, plus one file that is no tar at all."""
    good = [encode_sample(demo_sample(i, hw=(40, 40))) for i in range(4)]
    paths = [str(tmp_path / f"mixed-{i}.tar") for i in range(2)]
    for i, path in enumerate(paths):
        with wds.TarWriter(path, encoder=False) as writer:
            writer.write(good[2 * i])
            for reason in REASONS[i::2]:
                for j in range(2):
                    writer.write({**corrupt(good[j], reason), "__key__": f"bad{j}_{reason}"})
            writer.write(good[2 * i + 1])
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar archive" * 40)
    return paths + [str(tmp_path / "garbage.tar")], [g["__key__"] for g in good]


def test_corrupt_samples_are_skipped_and_counted(bad_shards, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle must never be loaded")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    paths, good_keys = bad_shards
    dm = datamodule(paths, batch_size=1, resolution=32)
    stream = dm.build_dataset()
    keys = sorted(s.key for s in stream.epoch(0))
    assert keys == sorted(good_keys)
    assert dm.skip_counts() == {**{r: 2 for r in REASONS}, "tar_error": 1}


def test_worker_skips_are_counted_in_the_main_process(bad_shards):
    paths, good_keys = bad_shards
    dm = datamodule(paths[:2], batch_size=1, resolution=32, num_workers=2)
    batches = take(dm.train_dataloader(), 2 * len(good_keys) + 2)  # each worker ends epoch 0
    assert {b["key"][0] for b in batches} == set(good_keys)
    assert set(dm.skip_counts()) == set(REASONS) and min(dm.skip_counts().values()) >= 2


@pytest.mark.parametrize("reason", REASONS)
def test_validate_names_the_reason(reason):
    raw = corrupt(encode_sample(demo_sample(0, hw=(40, 40))), reason)
    with pytest.raises(BadSample) as err:
        validate(decode_sample(raw))
    assert err.value.reason == reason


def test_raw_pickle_payload_is_refused():
    raw = encode_sample(demo_sample(0, hw=(40, 40)))
    raw["crops.npy"] = pickle.dumps(np.zeros((1, 3, 160, 160), np.uint8))
    with pytest.raises(BadSample, match="bad_npy"):
        decode_sample(raw)


def test_no_pickle_loading_in_the_data_code():
    for path in Path(__file__).parents[1].joinpath("datamodules").glob("*.py"):
        code = path.read_text()
        for pattern in (r"import pickle", r"from pickle", r"torch\.load\(", r"allow_pickle=True",
                        r"wds\.decode\(", r"\.decode\(\s*\"(pil|torch)"):
            assert not re.search(pattern, code), (path.name, pattern)


def test_expand_shards(tmp_path):
    for i in range(3):
        (tmp_path / f"s-{i}.tar").touch()
    assert len(expand_shards(str(tmp_path / "s-*.tar"))) == 3
    assert expand_shards(str(tmp_path / "s-{0..1}.tar")) == [str(tmp_path / f"s-{i}.tar")
                                                             for i in range(2)]
    assert expand_shards([str(tmp_path / "s-2.tar")]) == [str(tmp_path / "s-2.tar")]
    with pytest.raises(ValueError, match="no shards"):
        expand_shards(str(tmp_path / "none-*.tar"))


def test_too_few_shards_for_the_workers_is_an_error(shards):
    loader = datamodule(shards[:1], num_workers=2).train_dataloader()
    with pytest.raises(ValueError, match="cannot feed"):
        next(iter(loader))


@pytest.mark.parametrize("fmt,options", [("JPEG", {}), ("JPEG", {"progressive": True}),
                                         ("PNG", {})])
@pytest.mark.parametrize("shape", [(37, 53, 3), (120, 41)])
def test_image_header_reads_the_size_pil_reads(fmt, options, shape):
    """The decoders' header reader gives PIL's format and size, and None (PIL decides)
    for what is not plainly a PNG or JPEG header."""
    from PIL import Image

    from datamodules.image_header import image_header

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, np.uint8)).save(
        out, fmt, **options)
    image = Image.open(io.BytesIO(out.getvalue()))
    assert image_header(out.getvalue()) == (image.format, image.width, image.height)
    for junk in (b"", b"GIF89a", b"\xff\xd8\xff", b"\xff\xd8\x00\x00", out.getvalue()[:12]):
        assert image_header(junk) is None
