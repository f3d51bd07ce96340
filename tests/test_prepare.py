"""prepare.py on real photos: shards, stats, resume, parallel workers, masks, and the way
back through the DataModules to every method's batch and a training step. Videos:
test_videos.py."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import webdataset as wds
from PIL import Image

from datamodules.prepare import PrepareConfig, main, prepare, run_task
from datamodules.prepare.annotate import SampleAnnotator, face_masks
from datamodules.schema import MASK_BOX, MASK_CHAR, MASK_SEG, validate
from datamodules.shards import ShardDataModule
from datamodules.prepare.sources import plan_images
from ldm_ext.perception.annotator import Filters
from ldm_ext.perception.segmenters import EllipseSegmenter


pytestmark = pytest.mark.usefixtures("one_thread")


def t1_path() -> str:
    import insightface

    return os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")


def rgb(image: np.ndarray) -> np.ndarray:
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image


@pytest.fixture(scope="module")
def annotator() -> SampleAnnotator:
    return SampleAnnotator("mtcnn", pose="faces", segmenter="ellipse", characters="pose-hull",
                           filters=Filters(min_score=0.95, min_face_size=20))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three real photos (astronaut and t1 with captions, camera without), a corrupt file
    and a blank image."""
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(folder / "a_astronaut.jpg")
    (folder / "a_astronaut.txt").write_text("an astronaut in a suit")
    Image.fromarray(rgb(skimage.data.camera())).save(folder / "b_camera.png")
    Image.open(t1_path()).save(folder / "c_t1.jpg")
    (folder / "c_t1.txt").write_text("six friends")
    (folder / "d_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    Image.new("RGB", (96, 96), (200, 180, 160)).save(folder / "e_blank.png")
    return folder


@pytest.fixture(scope="module")
def prepared(photos, annotator, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    config = PrepareConfig(str(out), annotator, max_side=640, previews=2)
    stats = prepare(plan_images(str(photos), samples_per_shard=2), config, workers=1)
    return out, stats


def test_real_photos_have_the_right_faces(prepared, shard_samples):
    out, stats = prepared
    samples = shard_samples(out)
    assert {k: s.num_faces for k, s in samples.items()} == \
        {"a_astronaut": 1, "b_camera": 1, "c_t1": 6}  # MTCNN at score >= 0.95
    assert stats["kept"] == 3 and stats["inputs"] == 5 and stats["shards"] == 3
    assert stats["rejected"] == {"bad_image": 1, "too_few_faces": 1}
    assert stats["faces"] == {"1": 2, "6": 1}
    assert json.loads((out / "stats.json").read_text()) == stats
    assert samples["b_camera"].caption == "a photo of one person"  # no .txt: named by count
    assert samples["c_t1"].caption == "six friends"
    assert len(list((out / "previews").glob("*.jpg"))) == 2


def test_annotations_name_their_models_and_align(prepared, shard_samples):
    sample = shard_samples(prepared[0])["c_t1"]
    assert sample.face_model == "mtcnn" and sample.pose_model == "faces-fallback"
    assert sample.models == {"masks": "box+25%|ellipse|pose-hull(faces-fallback)",
                             "character": "pose-hull(faces-fallback)"}
    assert sample.masks.shape == (6, *sample.hw) and max(sample.hw) == 640
    for box, mask in zip(sample.boxes, sample.masks):
        (x0, y0, x1, y1), (cx, cy) = box, (box[:2] + box[2:]) / 2
        assert mask[int(cy), int(cx)] == MASK_BOX | MASK_SEG | MASK_CHAR
        ys, xs = np.nonzero(mask & MASK_BOX)  # box + 25 % about the centre
        assert abs((xs.max() + 1 - xs.min()) - 1.25 * (x1 - x0)) <= 2
        seg = (mask & MASK_SEG) > 0
        assert not seg[int(y0) - 2].any() and seg.sum() < (x1 - x0) * (y1 - y0)  # in the box
    assert (sample.face_person == np.arange(6)).all()
    characters = (sample.masks & MASK_CHAR) > 0  # (6, H, W): one owner per pixel at most
    assert characters.sum(axis=0).max() == 1 and (characters.sum(axis=(1, 2)) > 0).all()
    character = sample.character
    assert character.ndim == 3 and (character[0, 0] > 240).all()  # white background
    assert (sample.landmarks[:, 0, 0] < sample.landmarks[:, 1, 0]).all()


def test_resume_skips_finished_shards(prepared, annotator, photos, capsys):
    out = prepared[0]
    tars = sorted(out.glob("shard-*.tar"))
    mtimes = [p.stat().st_mtime_ns for p in tars]
    (out / "shard-000002.json").unlink()  # shard 2 (broken + blank) was interrupted
    stats = prepare(plan_images(str(photos), 2), PrepareConfig(str(out), annotator), workers=1)
    assert "prepared 1 inputs in 1 shards (2 already done)" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in tars[:2]] == mtimes[:2]
    assert stats == prepared[1] and not list(out.glob("*.tmp"))


def test_prepared_photos_feed_an_instantfamily_batch(prepared):
    dm = ShardDataModule(str(prepared[0] / "shard-*.tar"), resolution=64, batch_size=3,
                         num_workers=0, num_slots=4, shuffle_buffer=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert batch["face_crops"].shape == (3, 4, 3, 160, 160)
    valid = dict(zip(batch["key"], batch["face_valid"].sum(1).tolist()))
    assert valid["a_astronaut"] == 1 and valid["b_camera"] == 1
    assert valid["c_t1"] == 4  # six faces, four slots: a random four, none dropped
    assert dm.skip_counts() == {}


def test_prepared_photos_train_instantfamily_with_train_py(prepared, tmp_path):
    """Issue 4's end to end: real photos -> prepare -> shards -> LaionFaceDataModule ->
    InstantFamily training steps through train.py (tiny backbone, CPU)."""
    from ldm_ext import training

    args = [f"output_dir={tmp_path}", "name=real", "trainer.max_steps=2", "logger.wandb=false",
            "trainer.progress_bar=false", "trainer.checkpoint_every=2", "method.sample_steps=1",
            "method.sample_num_ids=[1]",
            "data.kind=laion_face", f"data.root={prepared[0]}", "data.resolution=64",
            "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=1"]
    assert training.main(args) == 0
    assert (tmp_path / "real" / "checkpoints" / "last.ckpt").is_file()


def test_prepared_photos_feed_storymaker_and_portraitbooth_batches(prepared):
    def batch(view: str, slots: int) -> dict:
        dm = ShardDataModule(str(prepared[0] / "shard-*.tar"), resolution=64, batch_size=3,
                             num_workers=0, num_slots=slots, shuffle_buffer=1, view=view)
        return next(iter(dm.train_dataloader()))

    story = batch("storymaker", 2)
    masks = story["character_masks"]  # (3, 2, 64, 64)
    assert masks.shape == (3, 2, 64, 64) and story["characters"].shape == (3, 2, 3, 224, 224)
    group = story["key"].index("c_t1")
    assert story["face_valid"][group].all() and masks[group].sum((1, 2)).min() > 0
    assert masks[group].sum(0).max() == 1  # two characters never share a pixel
    assert (story["characters"][group] < 1).any(dim=1).float().mean() > 0.2  # not all white
    portrait = batch("portraitbooth", 1)
    assert portrait["reference"].shape == (3, 1, 3, 160, 160)
    assert (portrait["face_masks"].sum((1, 2, 3)) > 0).all()


def test_image_shards_and_parquet_inputs(tmp_path, annotator):
    small = Image.fromarray(skimage.data.astronaut()).resize((256, 256))
    jpg = io.BytesIO()
    small.save(jpg, format="JPEG")
    with wds.TarWriter(str(tmp_path / "in-000.tar")) as writer:  # img2dataset's output
        writer.write({"__key__": "000000001", "jpg": jpg.getvalue(), "txt": "astronaut"})
        writer.write({"__key__": "000000002", "jpg": jpg.getvalue(), "txt": ""})
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = pa.table({"key": ["p1"], "caption": ["from parquet"], "jpg": [jpg.getvalue()]})
    pq.write_table(table, tmp_path / "laion.parquet")
    for source, name in ((tmp_path, "tar"), (tmp_path / "laion.parquet", "parquet")):
        tasks = plan_images(str(source), 10)
        assert [t.kind for t in tasks] == [name]
        stats = run_task(tasks[0], PrepareConfig(str(tmp_path / f"out-{name}"), annotator))
        assert stats["kept"] == 1 and stats["faces"] == {"1": 1}
    assert stats["inputs"] == 1 and run_task(plan_images(str(tmp_path), 10)[0], PrepareConfig(
        str(tmp_path / "out-tar2"), annotator))["rejected"] == {"empty_caption": 1}


def test_parallel_workers_write_the_same_shards(tmp_path):
    """Two spawned workers, one shard each; the result equals the in-process run."""
    folder = tmp_path / "in"
    folder.mkdir()
    small = Image.fromarray(skimage.data.astronaut()).resize((200, 200))
    for i in range(2):
        small.rotate(0 if i == 0 else 5).save(folder / f"img{i}.png")
    args = ["images", "--input", str(folder), "--samples-per-shard", "1", "--pose", "faces",
            "--min-face-size", "20", "--previews", "0"]
    one = main(args + ["--output", str(tmp_path / "one"), "--workers", "1"])
    two = main(args + ["--output", str(tmp_path / "two"), "--workers", "2"])
    assert one == two and one["kept"] == 2
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_face_masks_are_box_plus_quarter_ellipse_and_character():
    image = np.zeros((100, 120, 3), np.uint8)
    character = np.zeros((1, 100, 120), bool)
    character[0, 50:] = True
    masks = face_masks(image, np.array([[40.0, 20.0, 80.0, 60.0]]), EllipseSegmenter(),
                       character)
    assert ((masks[0] & MASK_CHAR) > 0).tolist() == character[0].tolist()
    ys, xs = np.nonzero(masks[0] & MASK_BOX)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (35, 84, 15, 64)
    ys, xs = np.nonzero(masks[0] & MASK_SEG)
    assert 39 <= xs.min() and xs.max() <= 81 and masks[0, 40, 60] == MASK_BOX | MASK_SEG
    assert masks[0, 55, 60] == MASK_BOX | MASK_SEG | MASK_CHAR
    assert masks[0, 21, 41] == MASK_BOX  # box corner: outside the ellipse


def test_a_face_cut_by_the_photo_edge_keeps_its_whole_box(annotator):
    """The astronaut cut through her face: MTCNN's box reaches past the left edge and is
    stored so, and the face region (box + 25 %) is grown from the whole box, then clipped;
    grown from the clipped box it would end ~8 px short of the face."""
    sample = validate(annotator("cut", np.ascontiguousarray(skimage.data.astronaut()[:, 200:]),
                                "an astronaut"))
    x0, _, x1, _ = sample.boxes[0]
    assert x0 < -20  # about -62: most of the box lies outside the photo
    ys, xs = np.nonzero(sample.masks[0] & MASK_BOX)
    assert xs.min() == 0 and abs(xs.max() + 1 - ((x0 + x1) / 2 + 0.625 * (x1 - x0))) <= 1


# --- DataModules over prepared data ----------------------------------------------------

def test_laion_face_and_folder_datamodules_read_prepared_shards(prepared, photos):
    from datamodules.folder import FolderDataModule
    from datamodules.laion_face import LaionFaceDataModule
    from datamodules.shard_folder import prepared_stats

    args = dict(resolution=32, batch_size=3, num_workers=0, shuffle_buffer=1)
    for dm in (LaionFaceDataModule(str(prepared[0]), **args),
               FolderDataModule(str(prepared[0]), **args)):
        batch = next(iter(dm.train_dataloader()))
        assert sorted(batch["key"]) == ["a_astronaut", "b_camera", "c_t1"]
    assert prepared_stats(prepared[0])["kept"] == 3
    with pytest.raises(FileNotFoundError, match="datamodules.prepare images"):
        LaionFaceDataModule(str(photos))


def test_folder_datamodule_prepares_on_first_use(tmp_path, annotator):
    from datamodules.folder import FolderDataModule

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(skimage.data.astronaut()).resize((200, 200)).save(folder / "me.jpg")
    dm = FolderDataModule(str(folder), output=str(tmp_path / "out"), annotator=annotator,
                          prepare_workers=1, resolution=32, batch_size=1, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["key"] == ["me"] and batch["caption"] == ["a photo of one person"]
    assert (tmp_path / "out" / "stats.json").exists()


def test_single_image_augmentations(tmp_path):
    from datamodules.single_image import SingleImageDataModule

    photo = np.zeros((80, 100, 3), np.uint8)
    photo[:, 10:50] = (200, 60, 40)  # left half of the centre square red, right half black
    Image.fromarray(photo).save(tmp_path / "me.png")
    dm = SingleImageDataModule(str(tmp_path / "me.png"), resolution=40, batch_size=64)
    batch = next(iter(dm.train_dataloader()))
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["pixel_values"], again["pixel_values"])  # seeded, no global RNG
    assert batch["pixel_values"].shape == (64, 3, 40, 40) and batch["mask"].shape == (64, 1, 40, 40)
    assert batch["caption"][0] == "a photo of the face of V*"
    scale = batch["mask"].mean(dim=(1, 2, 3)).sqrt()  # pasted side / R
    assert scale.min() >= 0.1 - 1e-6 and scale.max() <= 1.0 and scale.max() - scale.min() > 0.5
    big = scale > 0.6
    red = batch["pixel_values"][:, 0]  # (B, R, R)
    left, right = red[:, :, :20].mean((1, 2)), red[:, :, 20:].mean((1, 2))
    flipped = (right > left)[big].float().mean()
    assert 0.2 < flipped < 0.8  # about half are flipped (p = 0.5)
    inside = batch["pixel_values"][batch["mask"].expand(-1, 3, -1, -1) > 0]
    assert inside.abs().max() <= 1.0
    outside = batch["pixel_values"][batch["mask"].expand(-1, 3, -1, -1) == 0]
    assert torch.allclose(outside, torch.zeros_like(outside))  # grey canvas
    red_level = batch["pixel_values"][big][:, 0].amax((1, 2))  # the jittered red
    assert red_level.std() > 0.01
