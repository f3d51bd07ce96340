"""InstantFamily generation: 1 to 7 identities, pose templates, real photos, CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_ext.config import load_config
from ldm_ext.methods.loading import build_method
from ldm_ext.pipelines.base import MethodPipeline
from ldm_ext.pipelines.instantfamily import InstantFamilyPipeline, control_legend
from ldm_ext.perception.pose import SLOT_COLORS, pose_template, slot_color


@pytest.fixture(scope="module")
def method():
    cfg = load_config("configs/experiment/demo.yaml", ["method.face_weights=random"])
    return build_method(cfg).eval()


@pytest.mark.parametrize("num_ids", [1, 2, 4, 7, 14])
def test_generates_any_number_of_identities(method, num_ids):
    pipe = InstantFamilyPipeline(method)
    crops = torch.rand(num_ids, 3, 160, 160) * 2 - 1
    image = pipe("a photo of people", crops, size=(64, 128), steps=2, guidance=3.0,
                 generator=torch.Generator().manual_seed(0), progress=False)
    assert image.size == (128, 64)
    assert np.asarray(image).std() > 0


def test_control_inputs_circles_only_selected_people(method):
    pipe = InstantFamilyPipeline(method)
    people = pose_template(3, (96, 192))
    control, boxes = pipe.control_inputs(people, 2, (96, 192))
    assert control.shape == (1, 3, 96, 192) and boxes.shape == (1, 2, 4)
    pixels = (control[0].permute(1, 2, 0) * 255).round().byte().numpy()
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert tuple(SLOT_COLORS[0]) in colours and tuple(SLOT_COLORS[1]) in colours
    assert tuple(SLOT_COLORS[2]) not in colours
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[0, :, 0] < boxes[0, :, 2]).all()


def test_more_identities_than_slot_colours(method):
    """14 identities: slots 12 and 13 get generated colours, in the control image and in
    the legend's frames (the table has 12; generation used to fail at slot 12)."""
    size, crops = (96, 896), torch.rand(14, 3, 160, 160) * 2 - 1
    control, _ = InstantFamilyPipeline(method).control_inputs(pose_template(14, size), 14, size)
    pixels = (control[0].permute(1, 2, 0) * 255).round().byte().numpy()
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert {slot_color(k) for k in range(14)} <= colours
    legend = np.asarray(control_legend(crops, size))
    assert (legend == slot_color(13)).all(-1).any()


def test_face_regions_have_the_detector_box_size_on_a_real_photo(method):
    """Inference regions come from pose keypoints, training's from MTCNN boxes: on t1.jpg's
    pose (as prepare writes it), control_inputs' boxes have the detector boxes' area
    (within 10 % on average; the keypoint boxes alone are about 0.76x)."""
    import os

    import insightface

    from ldm_ext.face import build_face_detector
    from ldm_ext.perception.pose import people_from_faces

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    photo = np.asarray(Image.open(path).convert("RGB"))
    faces = build_face_detector("mtcnn", min_score=0.95).detect(photo)
    people = people_from_faces(faces.boxes, faces.landmarks, photo.shape[:2])
    _, boxes = InstantFamilyPipeline(method).control_inputs(people, len(people),
                                                            photo.shape[:2])
    height, width = photo.shape[:2]
    boxes = boxes[0].numpy() * [width, height, width, height]  # (F, 4) pixels
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    detected = np.prod(faces.boxes[:, 2:] - faces.boxes[:, :2], axis=1)
    assert abs((areas / detected).mean() - 1) <= 0.10


def test_identities_from_group_photo(method):
    import os

    import insightface

    from ldm_ext.face import build_face_detector

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    pipe = InstantFamilyPipeline(method, detector=build_face_detector("mtcnn", min_score=0.95))
    crops = pipe.identities_from_group(Image.open(path))
    assert crops.shape == (6, 3, 160, 160)
    with pytest.raises(ValueError, match="no face"):
        pipe.identities_from_photos([Image.new("RGB", (200, 200), "white")])


def test_stacked_identities_from_a_tensor_a_list_a_tuple_or_none():
    """Every pipeline reads one image's identities through ``MethodPipeline.stacked``."""
    crops = torch.rand(2, 6, 8, 8)
    assert MethodPipeline.stacked(crops) is crops
    for given in (list(crops), tuple(crops)):
        assert torch.equal(MethodPipeline.stacked(given), crops)
    assert MethodPipeline.stacked(None) is None and MethodPipeline.stacked([]) is None
