"""Parsing masks: SegFormer face and human parsers loaded by name/path (tiny random models
saved here), their crop placement, characters split between people, and their place in
prepare (required, auto, fallback)."""
import logging

import numpy as np
import pytest
import skimage.data
import torch

from datamodules.prepare.annotate import SampleAnnotator
from datamodules.schema import MASK_BOX, MASK_SEG
from ldm_ext.perception.annotator import Annotator, Filters
from ldm_ext.perception.character_masks import (HullCharacters, ParsedCharacters, keep_owned,
                                                regions)
from ldm_ext.perception.parsing import (FaceParsingSegmenter, HumanParser, ParserMissing,
                                        square_crops)
from ldm_ext.perception.pose import people_from_faces
from ldm_ext.perception.segmenters import EllipseSegmenter

# CelebAMask-HQ's labels in the order of jonathandinu/face-parsing
LABELS = ["background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow",
          "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l",
          "neck", "cloth"]
BOX = np.array([[180.0, 60.0, 260.0, 160.0]], np.float32)  # astronaut's face, roughly

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_parser(folder, favour: str, labels: list[str] = LABELS) -> str:
    """A random 2-stage SegFormer with a parser's ``labels`` whose head always prefers the
    label ``favour`` (its classifier bias), and a 64 px image processor."""
    from transformers import (SegformerConfig, SegformerForSemanticSegmentation,
                              SegformerImageProcessor)

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                             hidden_sizes=[8, 16], num_attention_heads=[1, 1],
                             decoder_hidden_size=16, num_labels=len(labels),
                             id2label=dict(enumerate(labels)),
                             label2id={n: i for i, n in enumerate(labels)})
    model = SegformerForSemanticSegmentation(config)
    with torch.no_grad():
        model.decode_head.classifier.bias.zero_()[labels.index(favour)] = 1e4
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return str(folder)


def test_face_parts_fill_the_face_crop_and_nothing_else(tmp_path):
    parser = FaceParsingSegmenter(tiny_parser(tmp_path, "skin"), local_files_only=True)
    image = skimage.data.astronaut()
    masks = parser(image, BOX)
    x0, y0, x1, y1 = square_crops(BOX, parser.context, image.shape[:2])[0]
    assert (x1 - x0, y1 - y0) == (150, 150)  # longer side 100 x 1.5, square about the box
    expected = np.zeros(image.shape[:2], bool)
    expected[y0:y1, x0:x1] = True
    assert masks.shape == (1, 512, 512) and np.array_equal(masks[0], expected)
    assert parser(image, np.zeros((0, 4), np.float32)).shape == (0, 512, 512)


def test_hair_is_not_a_face_part(tmp_path):
    parser = FaceParsingSegmenter(tiny_parser(tmp_path, "hair"), local_files_only=True)
    assert not parser(skimage.data.astronaut(), BOX).any()


def test_missing_parser_is_named_and_auto_falls_back(tmp_path, caplog):
    with pytest.raises(ParserMissing, match="jonathandinu/face-parsing"):
        FaceParsingSegmenter(str(tmp_path / "nowhere"), local_files_only=True)
    with pytest.raises(ParserMissing):
        Annotator(segmenter="face-parsing", parser=str(tmp_path / "nowhere")).face_segmenter()
    with caplog.at_level(logging.WARNING):
        fallback = Annotator(parser=str(tmp_path / "nowhere")).face_segmenter()
    assert isinstance(fallback, EllipseSegmenter) and "ellipse masks" in caplog.text


def test_prepare_stores_parsed_masks_and_names_the_parser(tmp_path):
    folder = tiny_parser(tmp_path / "parser", "skin")
    annotator = SampleAnnotator(pose="faces", segmenter="face-parsing", parser=folder,
                                characters="pose-hull",
                                filters=Filters(min_score=0.95, min_face_size=20))
    sample = annotator("astro", skimage.data.astronaut(), "an astronaut")
    assert sample.models["masks"].startswith(f"box+25%|face-parsing({folder})|")
    seg = (sample.masks[0] & MASK_SEG) > 0
    assert seg.any() and ((sample.masks[0] & MASK_BOX) > 0).any()
    x0, y0, x1, y1 = square_crops(sample.boxes, 0.5, (512, 512))[0]
    assert seg[y0:y1, x0:x1].all() and seg.sum() == (y1 - y0) * (x1 - x0)


# ATR's labels in the order of mattmdjaga/segformer_b2_clothes
HUMAN_LABELS = ["Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants",
                "Dress", "Belt", "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg",
                "Left-arm", "Right-arm", "Bag", "Scarf"]
HW = (200, 300)
TWO_FACES = np.array([[60, 40, 100, 90], [200, 40, 240, 90]], np.float32)


def two_people() -> tuple[np.ndarray, list, np.ndarray]:
    """Image, people (landmark fallback skeletons) and links of two faces side by side."""
    x0, y0 = TWO_FACES[:, :1], TWO_FACES[:, 1:2]
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.75], [0.65, 0.75]])
    landmarks = np.stack([x0, y0], -1) + rel * [40, 50]  # (2, 5, 2)
    people = people_from_faces(TWO_FACES, landmarks.astype(np.float32), HW)
    image = np.random.default_rng(0).integers(0, 255, (*HW, 3), dtype=np.uint8)
    return image, people, np.arange(2)


def test_keep_owned_gives_each_pixel_to_the_nearest_seed():
    seeds = np.zeros((3, 10, 41), bool)
    seeds[0, :, 5], seeds[1, :, 35], seeds[2, 0, 0] = True, True, True
    kept = keep_owned(np.ones((2, 10, 41), bool), seeds, np.zeros((0, 4)))
    assert kept.shape == (2, 10, 41) and not (kept[0] & kept[1]).any()
    assert kept[0, 5, 19] and not kept[0, 5, 21] and kept[1, 5, 21]  # 14 < 16 px, 16 > 14
    assert not kept[:, 0, 0].any()  # nearest to the third seed (a person without a face)
    face = np.array([[28, 3, 34, 7], [30, 0, 40, 10]], np.float32)  # seed 0's face, over 1's
    kept = keep_owned(np.ones((2, 10, 41), bool), seeds, face)
    assert kept[0, 5, 31] and kept[0, 5, 32] and kept[1, 5, 34]  # in face 0, nearer seed 1


def test_pose_hull_characters_are_face_and_body_and_never_overlap():
    image, people, links = two_people()
    masks = HullCharacters()(image, TWO_FACES, people, links)
    assert masks.shape == (2, *HW) and not (masks[0] & masks[1]).any()
    centres = ((TWO_FACES[:, :2] + TWO_FACES[:, 2:]) / 2).astype(int)
    for mask, (cx, cy), (other, _) in zip(masks, centres, centres[::-1]):
        assert mask[cy, cx] and mask[cy + 100, cx]  # the face, and the body two faces down
        assert not mask[:, other].any()  # nothing of the other person's middle


def test_human_parser_marks_person_pixels_split_between_characters(tmp_path):
    image, people, links = two_people()
    parser = HumanParser(tiny_parser(tmp_path, "Hair", HUMAN_LABELS), local_files_only=True)
    masks = ParsedCharacters(parser)(image, TWO_FACES, people, links)
    hulls = HullCharacters()(image, TWO_FACES, people, links)
    assert parser.name.startswith("human-parsing(") and not (masks[0] & masks[1]).any()
    assert (masks >= hulls).all() and masks.sum() > hulls.sum()
    assert regions(hulls, TWO_FACES, HW).tolist() == [[0, 9, 162, 200], [151, 9, 300, 200]]
    assert masks[0, 10, 0] and not hulls[0, 10, 0]  # a corner of its region, off its hull
    assert not masks[0, :9].any() and not masks[0, :, 162:].any()  # nothing off its region


def test_human_parser_finding_nobody_keeps_the_hulls(tmp_path):
    image, people, links = two_people()
    parser = HumanParser(tiny_parser(tmp_path, "Background", HUMAN_LABELS),
                         local_files_only=True)
    assert np.array_equal(ParsedCharacters(parser)(image, TWO_FACES, people, links),
                          HullCharacters()(image, TWO_FACES, people, links))


def test_missing_human_parser_is_named_and_auto_falls_back(tmp_path, caplog):
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(ParserMissing, match="mattmdjaga/segformer_b2_clothes"):
        Annotator(characters="human-parsing", human_parser=nowhere).character_segmenter()
    with caplog.at_level(logging.WARNING):
        fallback = Annotator(human_parser=nowhere).character_segmenter()
    assert isinstance(fallback, HullCharacters) and "pose-hull characters" in caplog.text


