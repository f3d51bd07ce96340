"""Oversampling by face count (datamodules/oversample.py) in the real shard stream: repeats
follow the factors, 1x leaves the stream unchanged, repeats get their own randomness, and
corrupt / duplicate samples are still skipped and counted once."""
from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
import torch
import webdataset as wds

from datamodules.codec import encode_sample
from datamodules.demo import demo_sample
from datamodules.oversample import check_factors, face_count
from datamodules.shards import ShardDataModule
from datamodules.views import build_view
from ldm_ext.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")
HW = (40, 40)


def with_faces(faces: int, start: int = 0):
    """The first demo sample from ``start`` on with ``faces`` faces."""
    return next(s for s in (demo_sample(i, hw=HW) for i in range(start, start + 300))
                if s.num_faces == faces)


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> tuple[list[str], dict[str, int]]:
    """One shard of six samples with one, two and three faces (two of each)."""
    path = tmp_path_factory.mktemp("oversample") / "mixed-0.tar"
    faces = {}
    with wds.TarWriter(str(path), encoder=False) as writer:
        for n in (1, 2, 3):
            for copy in range(2):
                sample = with_faces(n, start=40 * copy)
                writer.write({**encode_sample(sample), "__key__": f"f{n}_{copy}"})
                faces[f"f{n}_{copy}"] = n
    return [str(path)], faces


def datamodule(paths, **kwargs) -> ShardDataModule:
    args = dict(resolution=32, batch_size=1, num_workers=0, num_slots=3, seed=0,
                shuffle_buffer=16, view="storymaker")
    return ShardDataModule(paths, **{**args, **kwargs})


def epoch_keys(dm: ShardDataModule) -> list[str]:
    return [s.key for s in dm.build_dataset().epoch(0)]


def test_repeats_follow_the_factors(shard):
    paths, faces = shard
    dm = datamodule(paths, oversample={2: 2, 3: 5})
    counts = Counter(epoch_keys(dm))
    assert counts == {k: {1: 1, 2: 2, 3: 5}[n] for k, n in faces.items()}
    assert dm.skip_counts() == {}  # repeats are not duplicates


def test_one_x_leaves_the_stream_unchanged(shard):
    """Factors that match no sample run the stage but change nothing: same samples, same
    order, same per-sample randomness (the batches are equal)."""
    paths, _ = shard
    plain, noop = datamodule(paths), datamodule(paths, oversample={7: 3, 2: 1})
    assert epoch_keys(noop) == epoch_keys(plain)
    for a, b in zip(islice(iter(plain.build_dataset()), 8), islice(iter(noop.build_dataset()), 8)):
        assert a["key"] == b["key"]
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["characters"], b["characters"])


def test_repeats_are_shuffled_apart_and_drawn_anew(shard):
    """The repeats enter the shuffle buffer (not always back to back) and each has its own
    position, so its own draw (here the character rotation)."""
    paths, faces = shard
    dm = datamodule(paths, oversample={3: 5}, view_options={"reference_rotation": 10})
    stream = dm.build_dataset()
    keys = epoch_keys(dm)
    at = [i for i, k in enumerate(keys) if k == "f3_0"]
    assert at[-1] - at[0] > len(at) - 1  # other samples between the repeats
    unshuffled = epoch_keys(datamodule(paths, oversample={3: 5}, shuffle_buffer=1))
    assert unshuffled[unshuffled.index("f3_0"):][:5] == ["f3_0"] * 5  # repeated in place
    items = [stream.prepare(item, 0) for item in islice(stream.positioned(0, 1), len(keys))]
    crops = [i["characters"] for i in items if i["key"] == "f3_0"]
    assert len(crops) == 5
    assert not all(torch.equal(crops[0], c) for c in crops[1:])


def test_corrupt_and_duplicate_samples_are_counted_once(tmp_path):
    two = encode_sample(with_faces(2))
    path = tmp_path / "bad-0.tar"
    with wds.TarWriter(str(path), encoder=False) as writer:
        writer.write({**two, "__key__": "good"})
        writer.write({**two, "__key__": "broken", "jpg": b"\xff\xd8 not a jpeg"})
        writer.write({**two, "__key__": "unparsable", "faces.json": b"{not json"})
        writer.write({**two, "__key__": "good"})  # the shard repeats a key
    dm = datamodule([str(path)], oversample={2: 2})
    assert Counter(epoch_keys(dm)) == {"good": 2}
    assert dm.skip_counts() == {"bad_image": 1, "bad_json": 1, "duplicate_key": 1}


def test_face_count_reads_the_raw_json():
    raw = encode_sample(with_faces(3))
    assert face_count(raw) == 3
    assert face_count({**raw, "faces.json": b"[1"}) is None and face_count({}) is None


@pytest.mark.parametrize("factors", [{2: 0}, {"two": 2}, {2: 1.5}, {-1: 2}])
def test_bad_factors_are_named(factors):
    with pytest.raises(ValueError, match="oversample entry"):
        check_factors(factors)


def test_unknown_view_option_is_named():
    with pytest.raises(ValueError, match="takes no option reference_rotation"):
        build_view("instantfamily", num_slots=2, reference_rotation=10)


def test_recipes_set_the_official_data_recipe_only():
    official = load_config("configs/experiment/storymaker_sdxl_official.yaml").data
    assert dict(official.oversample) == {2: 2, 3: 5}
    assert dict(official.view_options) == {"reference_rotation": 10}
    paper = load_config("configs/experiment/storymaker_sdxl_paper.yaml").data
    assert not paper.oversample and not paper.view_options


def test_images_with_more_people_than_the_official_data_are_skipped_and_counted(shard):
    """The official StoryMaker data holds one- to three-person images; its recipe skips
    the others (``data.max_people``) instead of letting extra people count as background."""
    paths, faces = shard
    dm = datamodule(paths, max_people=2)
    assert sorted(epoch_keys(dm)) == sorted(k for k, n in faces.items() if n <= 2)
    assert dm.skip_counts() == {"too_many_people": 2}
    assert sorted(epoch_keys(datamodule(paths))) == sorted(faces)  # 0: no limit


def test_the_official_recipe_keeps_at_most_three_people():
    from ldm_ext.config import load_config

    official = load_config("configs/experiment/storymaker_sdxl_official.yaml")
    paper = load_config("configs/experiment/storymaker_sdxl_paper.yaml")
    assert (official.data.max_people, paper.data.max_people) == (3, 0)
