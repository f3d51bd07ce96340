"""Transforms keep geometry aligned: painted faces whose landmarks, boxes and keypoints must
land on their colours after resize, crop and flip; boxes move as torchvision moves them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.schema import Sample, validate
from datamodules.transforms import LANDMARK_FLIP, ResizeCrop, _move
from ldm_ext.perception.pose import Person

R = 64  # output resolution

pytestmark = pytest.mark.usefixtures("one_thread")


DOT = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]  # per landmark
HALVES = [((200, 120, 90), (150, 80, 50)), ((90, 140, 220), (50, 90, 160))]  # per face


def painted_sample(hw: tuple[int, int], boxes: list[list[int]]) -> Sample:
    """Faces as two-tone rectangles (left/right halves) with coloured landmark dots; each
    person's eyes (body 14/15, face 68/69) sit on the landmark eyes."""
    image = np.zeros((*hw, 3), np.uint8)
    marks, people = [], []
    for (x0, y0, x1, y1), (left, right) in zip(boxes, HALVES):
        xm, w, h = (x0 + x1) // 2, x1 - x0, y1 - y0
        image[y0:y1, x0:xm], image[y0:y1, xm:x1] = left, right
        mark = np.array([[x0 + w // 4, y0 + h // 3], [x1 - w // 4, y0 + h // 3],
                         [xm, y0 + h // 2], [x0 + w // 3, y1 - h // 4], [x1 - w // 3, y1 - h // 4]])
        for (x, y), colour in zip(mark, DOT):
            image[y - 2:y + 3, x - 2:x + 3] = colour
        body, face = np.zeros((18, 3)), np.zeros((70, 3))
        body[[14, 15, 0]] = np.c_[mark[:3], np.ones(3)]
        body[1] = (xm, y1 + 4, 1)  # neck
        face[[68, 69, 30, 48, 54]] = np.c_[mark, np.ones(5)]
        marks.append(mark)
        people.append(Person(body=body, face=face))
    crops = np.stack([np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize((160, 160),
                                                                             Image.NEAREST))
                      for x0, y0, x1, y1 in boxes]).transpose(0, 3, 1, 2)
    return validate(Sample(
        key="painted", image=image, caption="two boxes", boxes=np.array(boxes, np.float32),
        landmarks=np.array(marks, np.float32), scores=np.ones(len(boxes), np.float32),
        crops=np.ascontiguousarray(crops), people=people,
        face_person=np.arange(len(boxes)), face_model="paint", pose_model="paint"))


def near(pixel: np.ndarray, colour) -> bool:
    return np.abs(pixel.astype(int) - colour).max() <= 40


def check_alignment(out: Sample, flipped: bool) -> None:
    """Every kept face box still covers its two-tone face, halves swapped iff flipped; each
    landmark points at its dot (left/right swapped iff flipped); keypoints follow."""
    image, size = out.image, out.image.shape[0]
    for f, (box, marks) in enumerate(zip(out.boxes, out.landmarks)):
        person = out.people[out.face_person[f]]
        left = HALVES[out.face_person[f]][1 if flipped else 0]
        x0, y0, x1, y1 = np.clip(box, 0, size)  # the visible part of a cut box
        inner = image[int(y0) + 2:int(np.ceil(y1)) - 2, int(x0) + 2:int(np.ceil(x1)) - 2]
        assert inner.size and (inner.max(-1) >= 60).all()  # no background inside the box
        ring = np.zeros(image.shape[:2], bool)
        ring[max(0, int(y0) - 4):int(y1) + 5, max(0, int(x0) - 4):int(x1) + 5] = True
        ring[max(0, int(y0) - 1):int(y1) + 2, max(0, int(x0) - 1):int(x1) + 2] = False
        assert (image[ring].max(-1) < 30).all()  # black just outside the box
        if box.min() > 0 and box.max() < size:  # uncut: its left shows the left colour
            assert near(image[int(y0 + 0.15 * (y1 - y0)), int(x0 + (x1 - x0) / 8)], left)
            assert near(out.crops[f][:, 80, 20], left)  # the crop is mirrored with the image
        order = LANDMARK_FLIP if flipped else np.arange(5)
        for (x, y), j in zip(marks, order):
            if 0 <= x < size and 0 <= y < size:
                assert near(image[round(y), round(x)], DOT[j])
        np.testing.assert_allclose(person.body[[14, 15, 0], :2], marks[:3], atol=1e-4)
        np.testing.assert_allclose(person.face[[68, 69, 30, 48, 54], :2], marks, atol=1e-4)
        assert marks[0, 0] < marks[1, 0]  # image-left eye stays first


WIDE = [[27, 12, 43, 32], [53, 14, 69, 36]]  # inside the centre crop of a 48 x 96 image
TALL = [[4, 8, 18, 26], [28, 22, 42, 44]]  # inside 48 x 48


@pytest.mark.parametrize("hw,boxes,transform,flipped", [
    ((48, 48), TALL, ResizeCrop(R), False),  # resize only
    ((48, 96), WIDE, ResizeCrop(R), False),  # resize + centre crop
    ((48, 96), WIDE, ResizeCrop(R, flip_prob=1.0), True),
    ((96, 48), TALL, ResizeCrop(R, random_crop=True, flip_prob=1.0), True),
])
def test_transform_keeps_geometry_aligned(hw, boxes, transform, flipped):
    sample = painted_sample(hw, boxes)
    for seed in range(4):
        out = transform(sample, torch.Generator().manual_seed(seed))
        assert out.image.shape == (R, R, 3) and out.num_faces >= 1
        check_alignment(out, flipped)


def test_boxes_move_exactly_as_torchvision_moves_bounding_boxes():
    """Boxes ride along as corner keypoints; the result must be torchvision's own box
    geometry (edges flip as W - x), unclamped: a partly cropped box keeps its whole extent
    (InstantFamily adds its margin to the raw box), and its visible part decides the
    ``min_face`` drop."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(0)
    for seed in range(20):
        hw = tuple(int(v) for v in rng.integers(40, 120, 2))
        corner = rng.uniform(0, 1, (2, 2)) * [hw[1], hw[0]] * 0.8
        boxes = np.concatenate([corner, corner + rng.uniform(4, 30, (2, 2))], 1).clip(
            0, [hw[1], hw[0]] * 2).astype(np.float32)
        sample = painted_sample(hw, [[0, 0, 8, 8]] * 2)
        sample.boxes = boxes
        transform = ResizeCrop(R, random_crop=True, flip_prob=0.5, min_face=0.0)
        out = transform(sample, torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed)  # replay the transform's draws
        resized = transform.resized_hw(hw)
        top, left = transform._origin(resized, generator)
        flip = bool(torch.rand((), generator=generator) < 0.5)
        moved = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY",
                                         canvas_size=hw, clamping_mode=None)
        expected = F.crop(F.resize(moved, list(resized)), top, left, R, R)
        expected = F.horizontal_flip(expected) if flip else expected
        assert np.allclose(out.boxes, expected.numpy(), atol=1e-4)


def test_points_move_bit_for_bit_as_torchvision_keypoint_kernels():
    """The transform's numpy geometry is torchvision's keypoint kernels' float32
    arithmetic: the same bits (a flipped point on the last column included: -0.0)."""
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(1)
    transform = ResizeCrop(R)
    for trial in range(40):
        hw = tuple(int(v) for v in rng.integers(R, 4 * R, 2))
        resized = transform.resized_hw(hw)
        points = (rng.uniform(-0.2, 1.2, (50, 2)) * [hw[1], hw[0]]).astype(np.float32)
        points[:5] = np.round(points[:5])  # integer pixels, some on the crop's last column
        top, left = (int(rng.integers(0, resized[0] - R + 1)),
                     int(rng.integers(0, resized[1] - R + 1)))
        points[5, 0] = (left + R - 1) / (resized[1] / hw[1])
        flip = bool(trial % 2)
        expected, _ = F.resize_keypoints(torch.from_numpy(points), list(resized), canvas_size=hw)
        expected, _ = F.crop_keypoints(expected, top, left, R, R)
        if flip:
            expected = F.horizontal_flip_keypoints(expected, (R, R))
        got = points.copy()
        _move(got, np.float32([resized[1] / hw[1], resized[0] / hw[0]]),
              np.float32([left, top]), R if flip else 0)
        assert got.tobytes() == expected.numpy().tobytes()


def test_random_crop_moves_with_the_generator():
    sample = painted_sample((96, 48), TALL)
    tops = {float(ResizeCrop(R, random_crop=True)(sample, torch.Generator().manual_seed(s))
                  .landmarks[0, 0, 1]) for s in range(6)}
    assert len(tops) > 3


def test_crop_drops_faces_outside_and_hides_their_keypoints():
    sample = painted_sample((48, 144), [[2, 12, 18, 32], [60, 14, 76, 36]])
    sample.reference = np.ones((3, 160, 160), np.uint8)  # face 0's, from another frame
    out = ResizeCrop(R)(sample, torch.Generator())  # centre crop of 192 wide: x 64..128
    assert out.num_faces == 1 and out.face_person.tolist() == [1] and len(out.people) == 2
    assert out.reference is None  # face 0 is gone, its reference with it
    kept = painted_sample((48, 96), WIDE)
    kept.reference = sample.reference
    assert ResizeCrop(R)(kept, torch.Generator()).reference is sample.reference
    assert (out.people[0].body[:, 2] == 0).all() and (out.people[1].body[[0, 14, 15], 2] == 1).all()
    check_alignment(out, flipped=False)
