"""The corrupt-sample zoo (issue 4 §3): every kind of bad data is skipped and counted by
reason, nothing is unpickled, nothing stalls; more faces than slots are kept (slot choice)."""
from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from itertools import islice

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from datamodules.demo import demo_sample
from datamodules.codec import _npy, decode_sample, encode_sample
from datamodules.schema import MASK_BOX, BadSample, Sample, validate
from datamodules.shards import (MAX_EMPTY_EPOCHS, ShardDataModule, decode_and_validate,
                                decode_in_groups)
from ldm_ext.perception.pose import pose_template

HW = (48, 48)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle must never be loaded")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


def good(index: int, masks: bool = True) -> Sample:
    sample = demo_sample(index, hw=HW)
    if masks:
        sample.masks = np.full((sample.num_faces, *HW), MASK_BOX, np.uint8)
    return sample


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=array.dtype == object)
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (no pixel data): a bomb stand-in."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def zero_faces() -> Sample:
    return Sample(key="", image=np.zeros((*HW, 3), np.uint8), caption="an empty room",
                  boxes=np.zeros((0, 4), np.float32), landmarks=np.zeros((0, 5, 2), np.float32),
                  scores=np.zeros(0, np.float32), crops=np.zeros((0, 3, 160, 160), np.uint8),
                  people=pose_template(1, HW), face_person=np.zeros(0, np.int64))


def broken(reason: str, key: str) -> dict:
    """An encoded sample that must be skipped as ``reason``."""
    raw = encode_sample(good(1))
    faces = json.loads(raw["faces.json"])
    if reason == "bad_image":
        raw["jpg"] = raw["jpg"][:40]  # undecodable (truncated) JPEG
    elif reason == "missing_key":
        del raw["pose.json"]
    elif reason == "no_faces":
        raw = encode_sample(zero_faces())
    elif reason == "box_outside":
        faces["boxes"][0] = [50.0, 30.0, 90.0, 40.0]  # wholly right of the 48 px image
    elif reason == "nan":
        faces["boxes"][0][0] = float("nan")  # json writes NaN, python's reader accepts it
    elif reason == "bad_shape":  # a mask of the wrong size
        png = io.BytesIO()
        Image.fromarray(np.zeros((len(faces["boxes"]) * 40, 48), np.uint8)).save(png, "PNG")
        raw["masks.png"] = png.getvalue()
    elif reason == "empty_caption":
        raw["txt"] = b"\n"
    elif reason == "too_large":
        raw["jpg"] = png_header(9000, 9000)
    elif reason == "bad_npy":  # a pickle payload where an array belongs
        raw["crops.npy"] = npy(np.array([{"evil": 1}], dtype=object))
    if "faces.json" in raw and reason in ("box_outside", "nan"):
        raw["faces.json"] = json.dumps(faces).encode()
    return {**raw, "__key__": key}


ZOO = ["bad_image", "missing_key", "no_faces", "box_outside", "nan", "bad_shape",
       "empty_caption", "too_large", "bad_npy"]


@pytest.fixture()
def zoo(tmp_path) -> tuple[list[str], set[str]]:
    """Shards mixing good samples with every broken kind, a duplicate key, a six-face sample,
    a stray pickle member, and a truncated tar."""
    crowd = good(0, masks=False)
    boxes = np.array([[2 + 7 * i, 2, 8 + 7 * i, 8] for i in range(6)], np.float32)
    crowd.boxes, crowd.scores = boxes, np.ones(6, np.float32)
    crowd.landmarks = np.repeat(((boxes[:, None, :2] + boxes[:, None, 2:]) / 2), 5, axis=1)
    crowd.crops = np.zeros((6, 3, 160, 160), np.uint8)
    crowd.people, crowd.face_person = [], np.full(6, -1)
    crowd.key = "crowd"
    keys = ["g0", "g1", "g2", "crowd"]
    samples = [encode_sample(good(i)) for i in range(3)] + [encode_sample(crowd)]
    for raw, key in zip(samples, keys):
        raw["__key__"] = key
    samples[0]["evil.pickle"] = pickle.dumps({"x": 1})  # a stray member: never read
    mixed = tmp_path / "zoo-0.tar"
    with wds.TarWriter(str(mixed), encoder=False) as writer:
        writer.write(samples[0])
        for reason in ZOO:
            writer.write(broken(reason, f"bad_{reason}"))
        writer.write(samples[1])
        writer.write(samples[3])
        writer.write({**samples[1]})  # the same key again, later in the shard
    whole = tmp_path / "zoo-1.tar"
    with wds.TarWriter(str(whole), encoder=False) as writer:
        writer.write(samples[2])
        for i in range(4, 8):
            writer.write({**encode_sample(good(i)), "__key__": f"lost{i}"})
    data = whole.read_bytes()
    (tmp_path / "zoo-1.tar").write_bytes(data[: len(data) * 2 // 5])  # truncated mid-member
    return [str(mixed), str(whole)], set(keys)


def datamodule(paths, **kwargs) -> ShardDataModule:
    args = dict(resolution=32, batch_size=1, num_workers=0, num_slots=4, shuffle_buffer=1)
    return ShardDataModule(paths, **{**args, **kwargs})


def test_zoo_is_skipped_and_counted_by_reason(zoo):
    paths, keys = zoo
    dm = datamodule(paths)
    stream = dm.build_dataset()
    seen = [s.key for s in stream.epoch(0)]
    assert len(seen) == len(set(seen))  # the duplicate is dropped
    assert keys <= set(seen) and "lost7" not in seen  # samples before the cut survive
    assert set(seen) - keys <= {"lost4", "lost5", "lost6"}
    counts = dm.skip_counts()
    assert {r: counts[r] for r in ZOO} == {r: 1 for r in ZOO}
    assert counts["duplicate_key"] == 1 and counts["tar_error"] >= 1  # truncated tar


def test_more_faces_than_slots_are_kept_in_a_batch(zoo):
    dm = datamodule(zoo[0][:1], batch_size=4, shuffle_buffer=1)
    batch = next(iter(dm.train_dataloader()))
    valid = dict(zip(batch["key"], batch["face_valid"].sum(1).tolist()))
    assert valid["crowd"] == 4 and batch["face_valid"].shape == (4, 4)


@pytest.mark.parametrize("view,slots", [("storymaker", 2), ("portraitbooth", 1)])
def test_every_view_takes_the_zoo(zoo, view, slots):
    """Views that decode optional members (masks, references) see the same zoo: the bad
    samples are skipped and counted before them, the good ones (with or without masks, a
    crowd without people) all make batches."""
    dm = datamodule(zoo[0][:1], view=view, num_slots=slots, batch_size=2)
    batches = list(islice(iter(dm.train_dataloader()), 6))
    assert {k for b in batches for k in b["key"]} == {"g0", "g1", "crowd"}
    assert all(b["face_valid"].shape == (2, slots) for b in batches)
    counts = dm.skip_counts()
    assert all(counts[r] >= 1 for r in ZOO)


def test_workers_do_not_stall_on_the_zoo(zoo):
    dm = datamodule(zoo[0][:1], num_workers=2)
    with pytest.raises(ValueError, match="cannot feed"):  # one shard, two workers: fails fast
        next(iter(dm.train_dataloader()))
    dm = datamodule("::".join(zoo[0]), num_workers=2)  # a shard per worker
    batches = list(islice(iter(dm.train_dataloader()), 8))
    assert {b["key"][0] for b in batches} <= zoo[1] | {"lost4", "lost5", "lost6"}


def test_only_bad_data_fails_instead_of_looping(tmp_path):
    path = tmp_path / "bad.tar"
    with wds.TarWriter(str(path), encoder=False) as writer:
        writer.write(broken("bad_image", "b0"))
    stream = datamodule([str(path)]).build_dataset()
    with pytest.raises(RuntimeError, match=f"no valid sample in {MAX_EMPTY_EPOCHS} epochs"):
        next(iter(stream))


@pytest.mark.parametrize("reason", ZOO)
def test_each_reason_is_named(reason):
    with pytest.raises(BadSample) as err:
        sample = validate(decode_sample(broken(reason, "k")))
        if sample.num_faces == 0:
            raise BadSample("no_faces")
    assert err.value.reason == reason


def person_fault(fault: str) -> dict:
    """An encoded two-face sample whose pose or links are broken by ``fault``."""
    sample = good(1)
    while sample.num_faces < 2 or len(sample.people) < 2:
        sample = good(sample.num_faces + 10 * len(sample.people))
    raw = encode_sample(sample)
    pose, faces = json.loads(raw["pose.json"]), json.loads(raw["faces.json"])
    if fault == "face_nan":
        pose["people"][1]["face"][3][0] = float("nan")
    elif fault == "body_overflow":  # finite in JSON, infinite as float32
        pose["people"][0]["body"][1][1] = 1e39
    elif fault == "landmark_inf":
        faces["landmarks"][1][2][0] = float("inf")
    elif fault == "link_twice":
        pose["face_person"] = [0, 0] + pose["face_person"][2:]
    elif fault == "link_missing_person":
        pose["face_person"][1] = len(pose["people"])
    elif fault == "link_below_none":
        pose["face_person"][0] = -2
    elif fault == "empty_box":
        faces["boxes"][1][3] = faces["boxes"][1][1]
    elif fault == "face_points_missing":
        pose["people"][0]["face"] = []
    elif fault == "short_body":
        pose["people"][1]["body"] = pose["people"][1]["body"][:17]
    elif fault == "person_not_object":
        pose["people"][1] = pose["people"][1]["body"]
    elif fault == "no_body":
        del pose["people"][0]["body"]
    raw["pose.json"], raw["faces.json"] = json.dumps(pose).encode(), json.dumps(faces).encode()
    return raw


@pytest.mark.parametrize("fault,reason", [
    ("face_nan", "nan"), ("body_overflow", "nan"), ("landmark_inf", "nan"),
    ("link_twice", "bad_person"), ("link_missing_person", "bad_person"),
    ("link_below_none", "bad_person"), ("empty_box", "box_outside"),
    ("face_points_missing", "bad_shape"), ("short_body", "bad_shape"),
    ("person_not_object", "bad_json"), ("no_body", "bad_json")])
def test_each_pose_and_link_fault_is_named(fault, reason):
    """Faults in people and links, which the decoder reads for all people at once and the
    checks test in one pass, are still each refused with their reason."""
    assert validate(decode_sample(person_fault("none"))).num_faces >= 2
    with pytest.raises(BadSample) as err, np.errstate(over="ignore"):
        validate(decode_sample(person_fault(fault)))
    assert err.value.reason == reason


def test_a_bad_image_is_named_before_bad_arrays():
    """The pixels are decoded after the arrays are read (``read_sample``), yet a sample
    with both faults is still refused as a bad image, as when it was read in one go."""
    raw = encode_sample(good(1))
    faces = json.loads(raw["faces.json"])
    faces["boxes"][0] = "not a box"
    raw["faces.json"] = json.dumps(faces).encode()
    cut = raw["jpg"][:len(raw["jpg"]) // 2]  # its header intact, its data cut
    for jpg, reason in ((cut, "bad_image"), (raw["jpg"], "bad_json")):
        with pytest.raises(BadSample) as err:
            decode_sample({**raw, "jpg": jpg})
        assert err.value.reason == reason


def test_decoding_in_groups_is_decoding_each_in_order():
    """Decoding a group's light parts first, then its pixels, yields the samples one by one
    decoding yields, in order, and refuses the same ones for the same reasons."""
    raws = [{**encode_sample(good(i)), "__key__": f"g{i}"} for i in range(6)]
    raws[1:1] = [broken(reason, f"bad_{reason}") for reason in ZOO[:4]]
    raws[7:7] = [broken(reason, f"bad_{reason}") for reason in ZOO[4:]]

    def one_by_one():
        for raw in raws:
            try:
                yield decode_and_validate(raw, min_faces=1)
            except BadSample as err:
                refused.append(err.reason)

    refused = []
    expected = [s.key for s in one_by_one()]
    expected_refused, refused = refused, []
    grouped = decode_in_groups(raws, size=4, min_faces=1,
                               handler=lambda err: refused.append(err.reason) or True)
    assert [s.key for s in grouped] == expected == [f"g{i}" for i in range(6)]
    assert sorted(refused) == sorted(expected_refused) == sorted(ZOO)


def test_consecutive_duplicate_key_is_counted(tmp_path):
    path = tmp_path / "dup.tar"
    raw = {**encode_sample(good(0)), "__key__": "same"}
    with wds.TarWriter(str(path), encoder=False) as writer:
        writer.write(raw)
        writer.write(raw)
    dm = datamodule([str(path)])
    assert [s.key for s in dm.build_dataset().epoch(0)] == ["same"]
    assert set(dm.skip_counts()) == {"duplicate_key"}


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.zeros((0, 3, 160, 160), np.uint8),
    np.asfortranarray(np.arange(15.0).reshape(3, 5)), np.arange(6, dtype=">i4"),
    np.float32(2.5) * np.ones(())])
def test_npy_reader_matches_numpy(array):
    """Our .npy reader (cached header parse, a view of the bytes) gives np.load's array."""
    out = io.BytesIO()
    np.save(out, array)
    got = _npy(out.getvalue())
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)
    for bad in (out.getvalue()[:-1], b"not npy", out.getvalue()[:9]):
        with pytest.raises(BadSample, match="bad_npy"):
            _npy(bad)


def test_optional_members_round_trip_and_follow_the_transform():
    from datamodules.transforms import ResizeCrop

    sample = good(2)
    sample.masks[:, :, :24] = 0  # left half off
    sample.character = np.full((20, 10, 3), 255, np.uint8)
    sample.reference = np.ones((3, 160, 160), np.uint8)
    sample.models = {"masks": "box+25%|ellipse"}
    back = validate(decode_sample(encode_sample(sample)))
    assert (back.masks == sample.masks).all() and back.models == sample.models
    raw = encode_sample(sample)
    raw["reference.npy"] = npy(np.array([{"evil": 1}], dtype=object))
    with pytest.raises(BadSample, match="bad_npy"):  # asked for: refused, not unpickled
        decode_sample(raw)
    lean = decode_sample(raw, optional=())  # not asked for: never read
    assert lean.masks is None and lean.reference is None and lean.character is None
    assert back.reference.shape == (3, 160, 160) and back.character.shape[2] == 3
    out = ResizeCrop(24, flip_prob=1.0)(back, torch.Generator())
    assert out.masks.shape == (out.num_faces, 24, 24)
    assert (out.masks[:, :, 12:] == 0).all() and (out.masks[:, :, :12] == MASK_BOX).all()


def test_uint8_batches_normalize_to_the_float_batches(tmp_path):
    from datamodules.demo import write_demo_shards

    paths = write_demo_shards(tmp_path, num_samples=4, size=48, samples_per_shard=4)
    plain = next(iter(datamodule(paths, batch_size=4).train_dataloader()))
    dm = datamodule(paths, batch_size=4, float_on_device=True)
    lean = next(iter(dm.train_dataloader()))
    assert lean["pixel_values"].dtype == torch.uint8 and lean["control"].dtype == torch.uint8
    moved = dm.on_after_batch_transfer(lean, 0)
    for key in ("pixel_values", "control", "face_crops"):
        assert moved[key].is_contiguous() and torch.equal(moved[key], plain[key]), key
    assert plain["pixel_values"].abs().max() <= 1.0
