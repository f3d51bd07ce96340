"""StoryMaker's character reference crop: the official trainer's (``mp_dataset.py``
``crop_refimg``), one function for training and generation, cut from the original photo."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.demo import demo_sample, with_fallback_masks
from datamodules.schema import MASK_CHAR
from datamodules.transforms import ResizeCrop
from datamodules.views import StoryMakerView
from ldm_ext.face.align import arcface_crops
from ldm_ext.perception.character_crop import character_on_white, reference_crop

pytestmark = pytest.mark.usefixtures("one_thread")


def official_blend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The official trainer's steps on the whole image: the mask dilated 7x7, blurred 5x5,
    the bounding rectangle of its contours, the person blended onto white through it."""
    soft = np.tile(mask[..., None].astype(np.uint8) * 255, (1, 1, 3))
    soft = cv2.GaussianBlur(cv2.dilate(soft, np.ones((7, 7), np.uint8)), (5, 5), 0)
    contours, _ = cv2.findContours(soft[..., 0], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rects = np.array([cv2.boundingRect(c) for c in contours])  # (n, 4) x, y, w, h
    x0, y0 = rects[:, :2].min(0)
    x1, y1 = (rects[:, :2] + rects[:, 2:]).max(0)
    alpha = soft[y0:y1, x0:x1] / 255.0
    return (255 * (1 - alpha) + alpha * image[y0:y1, x0:x1]).astype(np.uint8)


@pytest.mark.parametrize("centre", [(150, 200), (4, 6), (296, 396)])
def test_character_on_white_is_the_official_trainers_blend(centre):
    """Byte for byte, also where the soft mask meets the image border (the window trick)."""
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:300, 0:400]
    mask = ((yy - centre[0]) / 60) ** 2 + ((xx - centre[1]) / 30) ** 2 <= 1
    mask[yy % 37 == 0] = False  # a ragged mask: several contours
    assert np.array_equal(character_on_white(image, mask), official_blend(image, mask))
    assert character_on_white(image, np.zeros_like(mask)) is None


def test_reference_crop_squashes_with_lanczos():
    image = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[20:180, 70:130] = True  # a tall character: the square does not keep its aspect
    expected = Image.fromarray(official_blend(image, mask)).resize((224, 224), Image.LANCZOS)
    assert np.array_equal(reference_crop(image, mask), np.asarray(expected))
    assert (reference_crop(image, np.zeros_like(mask), 8) == 255).all()


def test_generation_uses_the_training_crop():
    import ldm_ext.pipelines.storymaker as pipeline

    assert pipeline.reference_crop is reference_crop


def test_view_cuts_references_from_the_original_photo():
    """A 256² sample trained at 64²: the references are cut from the 256² photo (the
    official trainer crops ``ori_img`` before resizing), not from the 64² training image."""
    sample = with_fallback_masks(next(s for s in (demo_sample(i, hw=(256, 256))
                                                  for i in range(50)) if s.num_faces == 1))
    small = ResizeCrop(64)(sample, torch.Generator().manual_seed(0))
    assert small.original is sample and small.original_faces.tolist() == [0]
    item = StoryMakerView(num_slots=1)(small, torch.Generator().manual_seed(0))
    mask = (sample.masks[0] & MASK_CHAR) > 0
    character = item["characters"][0].permute(1, 2, 0).numpy()
    assert np.array_equal(character, reference_crop(sample.image, mask))
    low = reference_crop(small.image, (small.masks[0] & MASK_CHAR) > 0)
    assert np.abs(character.astype(int) - low).mean() > 1  # a different crop than before
    face = item["face_crops"][0].permute(1, 2, 0).numpy()
    assert np.array_equal(face, arcface_crops(sample.image, sample.landmarks[:1], 224)[0])
    assert item["character_masks"].shape[-2:] == (64, 64)  # the loss masks stay at 64²
