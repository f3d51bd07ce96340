"""Pose geometry, InstantFamily control images and pose files."""
import json

import numpy as np
import pytest

from ldm_ext.perception.pose import (BODY_PARTS, FACE_TEMPLATE, FACE_TEMPLATE_5, SLOT_COLORS,
                                     OpenPoseEstimator, Person, PoseModelMissing, circle_radius,
                                     draw_slot_circle, draw_slot_circles, face_box, face_center,
                                     fit_people, people_from_faces, person_from_pose,
                                     pose_template, render_control_image, save_people, slot_color)
from ldm_ext.perception.pose.files import load_pose


def _person_with_face_box(x0, y0, x1, y1) -> Person:
    """A person whose face keypoints span exactly (x0, y0)-(x1, y1)."""
    face = np.zeros((70, 3), np.float32)
    face[:, :2] = FACE_TEMPLATE * [x1 - x0, y1 - y0] + [x0, y0]
    face[:, 2] = 1.0
    face[0, :2], face[1, :2] = (x0, y0), (x1, y1)
    face[2] = (999.0, 999.0, 0.0)  # missing keypoint: ignored
    return Person(body=np.zeros((18, 3)), face=face)


def _head_only_person() -> Person:
    body = np.zeros((18, 3), np.float32)
    body[0] = (100, 100, 1)  # nose
    body[14], body[15] = (90, 95, 1), (110, 95, 1)  # eyes
    body[16], body[17] = (80, 100, 0.5), (120, 100, 0.5)  # ears
    return Person(body=body)


def _pixels_of(image: np.ndarray, color) -> np.ndarray:
    """(K, 2) x, y of the pixels with exactly this colour."""
    ys, xs = np.nonzero((image == np.asarray(color, np.uint8)).all(axis=2))
    return np.stack([xs, ys], axis=1)


def test_face_box_from_face_keypoints_exact():
    person = _person_with_face_box(10, 20, 50, 100)  # w 40, h 80
    np.testing.assert_allclose(face_box(person), [5, 10, 55, 110])  # x 1.25 about (30, 60)
    np.testing.assert_allclose(face_box(person, margin=0.0), [10, 20, 50, 100])
    np.testing.assert_allclose(face_box(person, margin=1.0), [-10, -20, 70, 140])
    np.testing.assert_allclose(face_center(person), [30, 60])


def test_face_box_falls_back_to_head_keypoints():
    person = _head_only_person()  # eyes 10 px from the nose -> half side 2.2 * 10
    np.testing.assert_allclose(face_box(person, margin=0.0), [78, 78, 122, 122])
    np.testing.assert_allclose(face_box(person), [72.5, 72.5, 127.5, 127.5])
    np.testing.assert_allclose(face_center(person), [100, 100])
    no_face = Person(body=np.zeros((18, 3)), face=np.zeros((70, 3)))
    assert face_box(no_face) is None and face_center(no_face) is None


def test_slot_circles_at_once_are_each_circle():
    """Circles drawn together are each drawn alone, in order: centres rounded half to even,
    radius a quarter of the shorter side (half to even, at least 2)."""
    rng = np.random.default_rng(4)
    boxes = np.float32(rng.uniform(0, 60, (12, 2)).repeat(2, axis=1) +
                       rng.uniform(0, 30, (12, 4)) * [0, 0, 1, 1])
    boxes[:3] = np.round(boxes[:3] * 2) / 2  # exact halves: ties
    assert [circle_radius(b) for b in boxes] == \
        [max(2, int(round(0.25 * min(b[2] - b[0], b[3] - b[1])))) for b in boxes]
    together, alone = np.zeros((96, 96, 3), np.uint8), np.zeros((96, 96, 3), np.uint8)
    draw_slot_circles(together, boxes, list(range(12)))
    for k, box in enumerate(boxes):
        draw_slot_circle(alone, box, k)
        centre = (box[:2] + box[2:]) / 2
        assert tuple(alone[round(centre[1]), round(centre[0])]) == slot_color(k)
    assert np.array_equal(together, alone)


def test_slot_colors_are_distinct_and_not_openpose_colors():
    """The table, then generated colours for any number of slots: all distinct, none an
    OpenPose skeleton colour or white."""
    colours = [slot_color(k) for k in range(200)]
    assert colours[:len(SLOT_COLORS)] == SLOT_COLORS and len(set(colours)) == len(colours)
    openpose = {0, 51, 85, 102, 153, 170, 255}
    assert all(not set(color) <= openpose for color in colours)
    assert slot_color(40) == slot_color(40)  # deterministic
    with pytest.raises(ValueError, match="no colour"):
        slot_color(-1)


def test_control_image_circles_only_on_selected_faces():
    people = pose_template(3, (256, 384))
    image = render_control_image(people, (256, 384), circle_slots=[3, None, 0])
    assert image.shape == (256, 384, 3) and image.dtype == np.uint8
    for person, slot in [(people[0], 3), (people[2], 0)]:
        pixels = _pixels_of(image, SLOT_COLORS[slot])
        box = face_box(person, margin=0.0)
        radius = round(0.25 * min(box[2] - box[0], box[3] - box[1]))
        centre = face_center(person)
        assert tuple(image[int(round(centre[1])), int(round(centre[0]))]) == SLOT_COLORS[slot]
        assert np.linalg.norm(pixels - centre, axis=1).max() <= radius + 1
        assert abs(len(pixels) - np.pi * radius**2) < 0.2 * np.pi * radius**2
    other_slots = [c for k, c in enumerate(SLOT_COLORS) if k not in (0, 3)]
    assert all(len(_pixels_of(image, color)) == 0 for color in other_slots)


def test_control_image_keeps_skeleton_of_unselected_people():
    people = pose_template(2, (256, 256))
    image = render_control_image(people, (256, 256), circle_slots=[None, 1])
    x0, y0, x1, y1 = face_box(people[0]).astype(int)
    face_region = image[y0:y1, x0:x1]
    assert (face_region == 255).all(axis=2).sum() > 20  # white face keypoints, no circle
    assert not any(len(_pixels_of(face_region, c)) for c in SLOT_COLORS)
    neck, shoulder = people[0].body[1, :2], people[0].body[2, :2]
    mid = ((neck + shoulder) / 2).astype(int)
    assert image[mid[1], mid[0]].any()  # a limb between neck and right shoulder


def _controlnet_aux_drawing(people, hw):
    """The reference: controlnet_aux's own drawing of ``people`` (pixels in a frame of
    ``hw`` = (height, width))."""
    from controlnet_aux.open_pose import util
    from controlnet_aux.open_pose.body import Keypoint

    height, width = hw
    canvas = np.zeros((height, width, 3), np.uint8)
    for p in people:
        body = [Keypoint(x / width, y / height) if c > 0 else None for x, y, c in p.body]
        canvas = util.draw_bodypose(canvas, body)
        if p.face is not None:
            face = [Keypoint(x / width, y / height) if c > 0 else Keypoint(-1.0, -1.0)
                    for x, y, c in p.face]
            canvas = util.draw_facepose(canvas, face)
    return canvas


def _random_people(rng: np.random.Generator, hw: tuple[int, int]) -> list[Person]:
    """1-4 overlapping people with fractional, integer, off-canvas and missing points."""
    height, width = hw
    people = []
    for _ in range(rng.integers(1, 5)):
        points = rng.uniform(-0.1, 1.1, (88, 2)) * (width, height)
        ints = rng.random(88) < 0.3
        points[ints] = np.round(points[ints])
        points[:18:5, 0] = points[1, 0]  # vertical / horizontal limbs: angles of 90, 180
        points[2:18:6, 1] = points[1, 1]
        conf = (rng.random(88) > 0.15).astype(np.float32)
        both = np.concatenate([points, conf[:, None]], axis=1)
        people.append(Person(body=both[:18], face=both[18:] if rng.random() < 0.8 else None))
    return people


@pytest.mark.parametrize("hw", [(160, 200), (64, 64), (384, 512)])
def test_control_image_draws_exactly_as_controlnet_aux(hw):
    """ControlNet's OpenPose weights expect controlnet_aux's drawing: ours (computed in
    one pass per person) must give the same pixels, limb roundings and skipped points
    included."""
    rng = np.random.default_rng(sum(hw))
    cases = [pose_template(2, hw)] + [_random_people(rng, hw) for _ in range(40)]
    for people in cases:
        got = render_control_image(people, hw, circle_slots=[None] * len(people))
        assert got.shape == (*hw, 3)
        assert np.array_equal(got, _controlnet_aux_drawing(people, hw))


def test_control_image_explicit_radius_and_errors():
    people = pose_template(1, (128, 128))
    image = render_control_image(people, (128, 128), [5], radius=4)
    assert 30 < len(_pixels_of(image, SLOT_COLORS[5])) < 70
    with pytest.raises(ValueError, match="circle slots"):
        render_control_image(people, (128, 128), [0, 1])
    beyond = render_control_image(people, (128, 128), [len(SLOT_COLORS)], radius=4)
    assert 30 < len(_pixels_of(beyond, slot_color(len(SLOT_COLORS)))) < 70


def test_people_from_faces_geometry():
    height, width = 300, 400
    frontal_box = np.array([150, 60, 250, 160], np.float32)
    frontal = FACE_TEMPLATE_5 * 100 + frontal_box[:2]
    angle = np.deg2rad(20)  # a rolled face near the right border
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = (FACE_TEMPLATE_5 - 0.5) @ rotation.T * 60 + [370, 250]
    boxes = np.stack([frontal_box, [340, 220, 400, 280]]).astype(np.float32)
    people = people_from_faces(boxes, np.stack([frontal, rolled]), (height, width))
    assert len(people) == 2
    for person, box in zip(people, boxes):
        for points in (person.body, person.face):
            seen = points[points[:, 2] > 0, :2]
            assert (seen >= 0).all() and (seen[:, 0] < width).all() and (seen[:, 1] < height).all()
        centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * 1.25
        seen = person.face[person.face[:, 2] > 0, :2]
        assert len(seen) > 40 and (np.abs(seen - centre) <= half + 1e-3).all()
    assert (people[1].body[:, 2] == 0).any()  # legs below the image are missing
    body, face = people[0].body, people[0].face
    np.testing.assert_allclose(face[:, :2], FACE_TEMPLATE * 100 + frontal_box[:2], atol=1e-3)
    np.testing.assert_allclose(body[0, :2], frontal[2])  # nose
    np.testing.assert_allclose(body[[14, 15], :2], frontal[:2])  # subject's right eye: image left
    assert body[1, 1] > face[8, 1] > body[0, 1]  # neck below chin below nose
    assert body[2, 0] < body[1, 0] < body[5, 0]  # right shoulder on the image left
    assert BODY_PARTS[2] == "r_shoulder"


@pytest.mark.parametrize("hw", [(512, 512), (384, 768)])
def test_pose_template_faces_disjoint_and_inside(hw):
    height, width = hw
    for n in range(1, 9):
        people = pose_template(n, hw)
        assert len(people) == n
        boxes = np.stack([face_box(p) for p in people])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
        assert (boxes[:, 3] <= height).all()
        assert (boxes[1:, 0] > boxes[:-1, 2]).all()  # left to right, no overlap
    again = pose_template(8, hw)
    assert all(np.array_equal(a.body, b.body) for a, b in zip(people, again))


def test_fit_people_keeps_proportions_and_centres():
    people = pose_template(1, (100, 200)) + [_head_only_person()]
    fitted = fit_people(people, (100, 200), (400, 400))  # scale 2, 100 px bars top/bottom
    np.testing.assert_allclose(fitted[0].body[:, :2], people[0].body[:, :2] * 2 + [0, 100])
    np.testing.assert_allclose(fitted[0].face[:, 2], people[0].face[:, 2])  # confidences kept
    assert fitted[1].face is None
    tall = fit_people(people, (100, 200), (100, 50))  # scale 0.25: 37.5 px bars top/bottom
    np.testing.assert_allclose(tall[0].body[:, :2], people[0].body[:, :2] * 0.25 + [0, 37.5])


def test_json_round_trip(tmp_path):
    people = pose_template(2, (240, 320)) + [_head_only_person()]
    path = tmp_path / "pose.json"
    save_people(people, path, hw=(240, 320))
    stored = json.loads(path.read_text())
    assert (stored["height"], stored["width"]) == (240, 320)  # named keys: the file format
    loaded, hw, stored_size = load_pose(path)
    assert hw == (240, 320) and stored_size and len(loaded) == 3 and loaded[2].face is None
    for a, b in zip(people, loaded):
        np.testing.assert_allclose(a.body, b.body)
        if a.face is not None:
            np.testing.assert_allclose(a.face, b.face)
    save_people(people[:1], path)
    assert load_pose(path).hw is None and len(load_pose(path).people) == 1


def test_person_from_controlnet_aux_pose():
    from controlnet_aux.open_pose import PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    keypoints = [Keypoint(0.5, 0.25, 0.9)] + [None] * 17
    face = [Keypoint(0.1, 0.2)] * 69 + [Keypoint(-0.01, -0.01)]
    pose = PoseResult(BodyResult(keypoints, 1.0, 1), None, None, face)
    person = person_from_pose(pose, width=200, height=100)
    np.testing.assert_allclose(person.body[0], [100, 25, 0.9])
    assert (person.body[1:, 2] == 0).all()
    np.testing.assert_allclose(person.face[0], [20, 20, 1])
    assert person.face[69, 2] == 0


def test_openpose_estimator_missing_weights(tmp_path):
    with pytest.raises(PoseModelMissing, match="body_pose_model.pth"):
        OpenPoseEstimator(str(tmp_path))
    with pytest.raises(PoseModelMissing, match="lllyasviel/Annotators"):
        OpenPoseEstimator("lllyasviel/Annotators", local_files_only=True)


def _save_openpose_weights(folder, fill: float = 0.0) -> None:
    """The three checkpoints of lllyasviel/Annotators in their layout (body and hand keys
    without the model's first name component, as controlnet_aux's loader expects), every
    tensor set to ``fill``."""
    import torch
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    for name, model, strip in (("body_pose_model.pth", bodypose_model(), True),
                               ("hand_pose_model.pth", handpose_model(), True),
                               ("facenet.pth", FaceNet(), False)):
        state = {(k.split(".", 1)[1] if strip else k): torch.full_like(v, fill)
                 for k, v in model.state_dict().items()}
        torch.save(state, folder / name)


def test_openpose_estimator_real_path_on_local_weights(tmp_path):
    """controlnet_aux's OpenPose loads from a local folder and runs on a real photo through
    our wrapper; constant (all-zero) weights give flat heat maps, so nobody is found."""
    import skimage.data

    _save_openpose_weights(tmp_path)
    estimator = OpenPoseEstimator(str(tmp_path), local_files_only=True)
    assert estimator(skimage.data.astronaut()[::2, ::2]) == []
