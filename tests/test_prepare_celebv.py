"""prepare videos on CelebV-Text as users download it: clips named ``<id>.mp4.mp4`` by the
official script, the info json flat or wrapped (``clips``, ``clips_set1``/``clips_set2``),
the six text folders, wrong pronouns in the texts, and uncut raw videos named by
``ytb_id``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from datamodules.prepare.clip_meta import load_video_meta, video_caption
from datamodules.prepare import main
from ldm_ext.cli import InputError
from test_videos import write_clip

pytestmark = pytest.mark.usefixtures("one_thread")
CLI = ["--workers", "1", "--pose", "faces", "--segmenter", "ellipse", "--characters",
       "pose-hull", "--min-face-size", "20", "--previews", "0"]
ENTRY = {"ytb_id": "yt", "duration": {"start_sec": 0.0, "end_sec": 1.0},
         "bbox": {"top": 0.0, "bottom": 1.0, "left": 0.0, "right": 1.0}, "version": "v0.1"}


def face(size: int = 160) -> np.ndarray:
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((size, size)))


def text_release(root: Path, clips: dict[str, dict[str, list[str]]]) -> Path:
    """The six folders of the text release, ``<clip>.txt`` in each folder named."""
    for clip, folders in clips.items():
        for folder, lines in folders.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / f"{clip}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_json(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_official_clip_names_match_their_metadata(tmp_path, shard_samples):
    """``<id>.mp4.mp4`` clips against ``<id>.mp4`` keys: captioned from the texts; a clip
    the info json lacks is rejected and counted, not captioned generically."""
    clips = tmp_path / "processed"
    clips.mkdir()
    write_clip(clips / "abc_0.mp4.mp4", [face()] * 3)
    write_clip(clips / "zzz_9.mp4.mp4", [face()] * 3)
    info = write_json(tmp_path / "info.json", {"abc_0.mp4": ENTRY})
    texts = text_release(tmp_path / "texts", {"abc_0": {
        "face40_details_new": ["The woman has long hair."]}})
    stats = main(["videos", "--input", str(clips), "--meta", info, "--texts", str(texts),
                  "--output", str(tmp_path / "out")] + CLI)
    assert stats["kept"] == 1 and stats["rejected"] == {"no_metadata": 1}
    assert stats["rejected_inputs"] == [{"input": "zzz_9.mp4.mp4", "reason": "no_metadata"}]
    sample = shard_samples(tmp_path / "out")["abc_0"]
    assert sample.caption == "a photo of a woman, the woman has long hair."


@pytest.mark.parametrize("layout", ["flat", "clips", "sets"])
def test_info_json_layouts(tmp_path, layout):
    clips = {"a_0.mp4": ENTRY, "a_1": {**ENTRY, "bbox": {"top": 0.1, "bottom": 0.9,
                                                            "left": 0.2, "right": 0.8}}}
    data = {"flat": clips, "clips": {"clips": clips},
            "sets": {"clips_set1": {"a_0.mp4": ENTRY}, "clips_set2": {"a_1": clips["a_1"]}}}
    meta = load_video_meta(write_json(tmp_path / "info.json", data[layout]))
    assert sorted(meta) == ["a_0", "a_1"]
    assert meta["a_1"].ytb_id == "yt" and meta["a_1"].window == (0.0, 1.0)
    assert meta["a_1"].bbox == (0.1, 0.9, 0.2, 0.8)


@pytest.mark.parametrize("data, named", [
    ({"videos": {"a_0": ENTRY}}, "'videos'"),  # an unknown wrapper is no clip
    ({"clips": {"a_0": ENTRY}, "extra": 1}, "'extra'"),
    ({"clips": ["a_0"]}, "'clips'"),
    ([ENTRY], "list"),
    ({}, "no clips")])
def test_other_info_json_layouts_are_refused_naming_the_key(tmp_path, data, named):
    with pytest.raises(InputError, match=named):
        load_video_meta(write_json(tmp_path / "info.json", data))


def test_text_folders_are_read_by_name(tmp_path):
    """The release's parent folder: description first, emotion and action appended, the
    light folders unused; one line of each file, seeded by the clip."""
    info = write_json(tmp_path / "info.json", {"c_0": ENTRY, "c_1": ENTRY})
    lines = [f"The man has short hair, line {i}." for i in range(8)]
    texts = text_release(tmp_path / "texts", {
        clip: {"face40_details_new": lines, "emotion": ["He looks happy."],
               "action_dur": ["He talks."], "light_dir": ["Light from the left."],
               "light_intensity": ["bright."], "light_colot_temp": ["warm."]}
        for clip in ("c_0", "c_1")})
    meta = load_video_meta(info, str(texts))
    core, rest = meta["c_0"].text.split(". ", 1)
    assert core + "." in lines and rest == "He looks happy. He talks."
    assert meta == load_video_meta(info, str(texts))  # the same lines in every run
    assert meta["c_0"].text != meta["c_1"].text  # seeded per clip, not one global choice
    alone = load_video_meta(info, str(texts), extras=())["c_0"]
    assert alone.text == core + "." and alone.subject == "man"
    assert load_video_meta(info, str(texts / "face40_details_new"))["c_0"].text == alone.text
    with pytest.raises(InputError, match="face40_details_new"):
        load_video_meta(info, str(texts / "light_intensity"))


def test_subject_from_labels_else_the_majority_of_lines(tmp_path):
    """Wrong pronouns in the texts: CelebV-HQ's appearance labels decide; without labels
    the majority of the description's lines; disagreeing clips are noted."""
    mapping = ["blurry", "male", "young"]
    info = write_json(tmp_path / "info.json", {
        "meta_info": {"appearance_mapping": mapping},
        "clips": {"labelled": {**ENTRY, "attributes": {"appearance": [0, 0, 1]}},
                  "majority": ENTRY, "agreeing": ENTRY}})
    texts = text_release(tmp_path / "texts", {
        "labelled": {"face40_details_new": ["He has a big nose.", "The woman is young."]},
        "majority": {"face40_details_new": ["She has a big nose.", "He has a round face.",
                                            "She is young, her hair is black."]},
        "agreeing": {"face40_details_new": ["He has a beard.", "The man wears glasses."]}})
    meta = load_video_meta(info, str(texts))
    assert meta["labelled"].subject == "woman"
    assert meta["labelled"].text == "The woman is young."  # the line that agrees
    assert meta["majority"].subject == "woman" and meta["majority"].text.startswith("She")
    assert video_caption(meta["majority"]).startswith("a photo of a woman, she ")
    assert meta["majority"].notes == meta["labelled"].notes == ("subject_lines_disagree",)
    assert meta["agreeing"].notes == () and meta["agreeing"].subject == "man"


def test_disagreeing_texts_are_counted_in_stats(tmp_path):
    (tmp_path / "clips").mkdir()
    write_clip(tmp_path / "clips" / "m_0.mp4.mp4", [face()] * 3)
    info = write_json(tmp_path / "info.json", {"m_0.mp4": ENTRY})
    texts = text_release(tmp_path / "texts", {"m_0": {"face40_details_new": [
        "She smiles.", "He smiles.", "She is young."]}})
    stats = main(["videos", "--input", str(tmp_path / "clips"), "--meta", info, "--texts",
                  str(texts), "--output", str(tmp_path / "out")] + CLI)
    assert stats["kept"] == 1 and stats["notes"] == {"subject_lines_disagree": 1}
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["notes"] == stats["notes"]


def test_raw_videos_are_cut_and_cropped_by_the_info(tmp_path, shard_samples):
    """``--input`` holds the uncut video ``<ytb_id>.mp4``: each clip's frames come from its
    ``duration`` and are cropped to its normalised ``bbox``. Clip r_0 is the face on the
    right of the first second; r_1 the blank second after it."""
    frame = np.full((160, 320, 3), 60, np.uint8)
    frame[:, 160:] = face()
    blank = np.full((160, 320, 3), 60, np.uint8)
    (tmp_path / "raw").mkdir()
    write_clip(tmp_path / "raw" / "yt.mp4", [frame] * 5 + [blank] * 5, fps=5)
    box = {"top": 0.0, "bottom": 1.0, "left": 0.5, "right": 1.0}
    info = write_json(tmp_path / "info.json", {"clips": {
        "r_0": {**ENTRY, "bbox": box, "attributes": {"gender": "female"}},
        "r_1": {**ENTRY, "duration": {"start_sec": 1.0, "end_sec": 2.0}, "bbox": box}}})
    stats = main(["videos", "--input", str(tmp_path / "raw"), "--meta", info,
                  "--output", str(tmp_path / "out")] + CLI)
    assert stats["inputs"] == 2 and stats["kept"] == 1
    assert stats["rejected_inputs"] == [{"input": "yt.mp4:r_1", "reason": "no_reference_face"}]
    sample = shard_samples(tmp_path / "out")["r_0"]
    assert sample.caption == "a photo of a woman"
    height, width = sample.image.shape[:2]
    assert height == width and abs(width - 160) <= 8  # the right half, squared, not 320 wide
    assert sample.image.mean() > 80  # the face, not the grey left half
