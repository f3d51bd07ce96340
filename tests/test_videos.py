"""prepare videos on synthetic clips (CelebV-Text, PortraitBooth): the target frame, the
middle frame's reference face, captions naming the subject from the attributes or the
description, the released info/description layout, and the CelebV-Text DataModule."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from datamodules.prepare import main
from datamodules.prepare.clip_meta import ClipMeta, load_video_meta, video_caption

pytestmark = pytest.mark.usefixtures("one_thread")


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 5) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_videos_cli(tmp_path, shard_samples):
    face = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((256, 256)))
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "clip_a.mp4", [np.roll(face, 4 * i, axis=1) for i in range(5)])
    write_clip(clips / "clip_b.mp4", [np.full((256, 256, 3), 90, np.uint8)] * 5)
    mapping = ["Blurry", "Male", "Young"]  # CelebV-style appearance attributes
    meta = {"meta_info": {"appearance_mapping": mapping},
            "clips": {"clip_a": {"attributes": {"appearance": [0, 0, 1]},
                                 "text": "she smiles at the camera"},
                      "clip_b": {"attributes": {"gender": "male"}}}}
    (tmp_path / "info.json").write_text(json.dumps(meta))
    assert load_video_meta(str(tmp_path / "info.json"))["clip_b"].subject == "man"
    stats = main(["videos", "--input", str(clips), "--meta", str(tmp_path / "info.json"),
                  "--output", str(tmp_path / "out"), "--workers", "1", "--pose", "faces",
                  "--min-face-size", "20"])
    assert stats["kept"] == 1 and stats["rejected"] == {"no_reference_face": 1}
    sample = shard_samples(tmp_path / "out")["clip_a"]
    assert sample.caption == "a photo of a woman, she smiles at the camera"
    assert sample.reference.shape == (3, 160, 160) and sample.image.shape == (256, 256, 3)
    assert sample.models["reference"] == "mtcnn(middle frame)" and sample.num_faces == 1


def test_celebv_text_layout_ids_descriptions_and_subjects(tmp_path):
    """The released layout: a clip-keyed info json without attributes (ids with or without
    ".mp4") and one description file per clip, several lines each (one is chosen, seeded
    by the clip); the subject comes from the description."""
    info = {"clips": {"abc_0_0.mp4": {"ytb_id": "abc", "bbox": {"top": 0.0}, "version": "v0.11"},
                      "abc_1": {"ytb_id": "abc", "version": "v0.1"},
                      "abc_2": {"ytb_id": "abc", "version": "v0.1"}}}
    (tmp_path / "info.json").write_text(json.dumps(info))
    texts = tmp_path / "texts" / "face40_details_new"
    texts.mkdir(parents=True)
    (texts / "abc_0_0.txt").write_text("\nThe woman has long hair. She smiles.\nline two\n")
    (texts / "abc_1.txt").write_text("This young man has a beard and his mouth is closed.\n")
    meta = load_video_meta(str(tmp_path / "info.json"), str(tmp_path / "texts"))
    assert meta["abc_0_0"].subject == "woman"
    assert meta["abc_0_0"].text in ("The woman has long hair. She smiles.", "line two")
    assert meta["abc_0_0"] == load_video_meta(str(tmp_path / "info.json"),
                                              str(tmp_path / "texts"))["abc_0_0"]  # seeded
    assert meta["abc_1"].subject == "man"
    assert (meta["abc_2"].subject, meta["abc_2"].text) == ("person", "")  # no description
    assert meta["abc_2"].notes == ("no_description",)
    assert video_caption(meta["abc_1"]).startswith("a photo of a man, this young man")


def test_video_caption_without_text():
    assert video_caption(ClipMeta("person")) == "a photo of a person"


def test_celebv_text_datamodule_and_factory(tmp_path):
    from types import SimpleNamespace

    from datamodules.celebv_text import CelebVTextDataModule
    from datamodules.factory import build_datamodule
    from datamodules.single_image import SingleImageDataModule
    from ldm_ext.config import ConfigError

    face = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((160, 160)))
    (tmp_path / "clips").mkdir()
    write_clip(tmp_path / "clips" / "c.mp4", [face] * 3)
    (tmp_path / "m.json").write_text('{"c": {"ytb_id": "x"}}')  # no attributes: "a person"
    main(["videos", "--input", str(tmp_path / "clips"), "--meta", str(tmp_path / "m.json"),
          "--output", str(tmp_path / "out"), "--workers", "1", "--pose", "faces",
          "--min-face-size", "20"])
    data = dict(kind="celebv_text", root=str(tmp_path / "out"), resolution=32, batch_size=1,
                num_workers=0, shuffle_buffer=1, random_flip=False, shards=None, image=None,
                view_options={}, oversample={}, max_people=0)
    cfg = SimpleNamespace(seed=0, method=SimpleNamespace(num_slots=2, name="portraitbooth"),
                          data=SimpleNamespace(**data))
    dm = build_datamodule(cfg)
    assert isinstance(dm, CelebVTextDataModule)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["caption"] == ["a photo of a person"] and batch["face_valid"].tolist() == \
        [[True, False]]
    assert batch["reference"].shape == (1, 2, 3, 160, 160) and batch["reference"][0, 0].std() > 0.1
    cfg.data.kind, cfg.data.image = "single_image", None
    with pytest.raises(ConfigError, match="data.image"):
        build_datamodule(cfg)
    Image.fromarray(face).save(tmp_path / "me.png")
    cfg.data.image = str(tmp_path / "me.png")
    assert isinstance(build_datamodule(cfg), SingleImageDataModule)
