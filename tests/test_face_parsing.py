"""Face parsing masks: a SegFormer face parser loaded by name/path (tiny random model saved
here), its crop placement, and its place in prepare (required, auto, fallback)."""
import logging

import numpy as np
import pytest
import skimage.data
import torch

from datamodules.annotate import Annotator, EllipseSegmenter, Filters
from datamodules.face_parsing import FaceParserMissing, FaceParsingSegmenter, _crop_boxes
from datamodules.schema import MASK_BOX, MASK_SEG

# CelebAMask-HQ's labels in the order of jonathandinu/face-parsing
LABELS = ["background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow",
          "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l",
          "neck", "cloth"]
BOX = np.array([[180.0, 60.0, 260.0, 160.0]], np.float32)  # astronaut's face, roughly

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_parser(folder, favour: str) -> str:
    """A random 2-stage SegFormer with the parser's labels whose head always prefers the
    label ``favour`` (its classifier bias), and a 64 px image processor."""
    from transformers import (SegformerConfig, SegformerForSemanticSegmentation,
                              SegformerImageProcessor)

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                             hidden_sizes=[8, 16], num_attention_heads=[1, 1],
                             decoder_hidden_size=16, num_labels=len(LABELS),
                             id2label=dict(enumerate(LABELS)),
                             label2id={n: i for i, n in enumerate(LABELS)})
    model = SegformerForSemanticSegmentation(config)
    with torch.no_grad():
        model.decode_head.classifier.bias.zero_()[LABELS.index(favour)] = 1e4
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return str(folder)


def test_face_parts_fill_the_face_crop_and_nothing_else(tmp_path):
    parser = FaceParsingSegmenter(tiny_parser(tmp_path, "skin"), local_files_only=True)
    image = skimage.data.astronaut()
    masks = parser(image, BOX)
    x0, y0, x1, y1 = _crop_boxes(BOX, parser.context, image.shape[:2])[0]
    assert (x1 - x0, y1 - y0) == (150, 150)  # longer side 100 x 1.5, square about the box
    expected = np.zeros(image.shape[:2], bool)
    expected[y0:y1, x0:x1] = True
    assert masks.shape == (1, 512, 512) and np.array_equal(masks[0], expected)
    assert parser(image, np.zeros((0, 4), np.float32)).shape == (0, 512, 512)


def test_hair_is_not_a_face_part(tmp_path):
    parser = FaceParsingSegmenter(tiny_parser(tmp_path, "hair"), local_files_only=True)
    assert not parser(skimage.data.astronaut(), BOX).any()


def test_missing_parser_is_named_and_auto_falls_back(tmp_path, caplog):
    with pytest.raises(FaceParserMissing, match="jonathandinu/face-parsing"):
        FaceParsingSegmenter(str(tmp_path / "nowhere"), local_files_only=True)
    with pytest.raises(FaceParserMissing):
        Annotator(segmenter="face-parsing", parser=str(tmp_path / "nowhere")).face_segmenter()
    with caplog.at_level(logging.WARNING):
        fallback = Annotator(parser=str(tmp_path / "nowhere")).face_segmenter()
    assert isinstance(fallback, EllipseSegmenter) and "ellipse masks" in caplog.text


def test_prepare_stores_parsed_masks_and_names_the_parser(tmp_path):
    folder = tiny_parser(tmp_path / "parser", "skin")
    annotator = Annotator(pose="faces", segmenter="face-parsing", parser=folder,
                          filters=Filters(min_score=0.95, min_face_size=20))
    sample = annotator("astro", skimage.data.astronaut(), "an astronaut")
    assert sample.models["masks"] == f"box+25%|face-parsing({folder})"
    seg = (sample.masks[0] & MASK_SEG) > 0
    assert seg.any() and ((sample.masks[0] & MASK_BOX) > 0).any()
    x0, y0, x1, y1 = _crop_boxes(sample.boxes, 0.5, (512, 512))[0]
    assert seg[y0:y1, x0:x1].all() and seg.sum() == (y1 - y0) * (x1 - x0)
