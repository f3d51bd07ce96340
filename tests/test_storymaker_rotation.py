"""StoryMaker's reference rotation (the official trainer's augmentation): the character crop
is rotated on white by the angle drawn from the sample's generator, reproducibly; the
aligned face crop is not; 0 degrees changes nothing and draws nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.demo import demo_sample, with_fallback_masks
from datamodules.schema import MASK_CHAR
from datamodules.views import StoryMakerView
from datamodules.views.storymaker import draw_angles
from ldm_ext.perception.character_crop import reference_crop

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sample():
    """A demo sample with two faces and prepare's fallback masks."""
    return with_fallback_masks(next(s for s in (demo_sample(i, hw=(96, 96)) for i in range(200))
                                    if s.num_faces == 2))


def pattern() -> np.ndarray:
    """(60, 40, 3) uint8: an asymmetric, non-white character filling its whole box."""
    image = np.full((60, 40, 3), (30, 60, 90), np.uint8)
    image[5:20, 5:15] = (200, 20, 20)  # a red block near the top left
    return image


def test_reference_crop_rotates_on_white_before_the_squash():
    """Counter-clockwise about the centre by PIL's ``rotate`` (nearest neighbour, as the
    official trainer calls it), the uncovered corners white, then the squash."""
    image = np.full((100, 100, 3), 255, np.uint8)
    mask = np.zeros((100, 100), bool)
    image[20:80, 30:70], mask[20:80, 30:70] = pattern(), True
    plain, turned = reference_crop(image, mask, 32), reference_crop(image, mask, 32, 10.0)
    assert (plain[8:24, 8:24] != 255).any(axis=-1).all()  # the character fills its square
    assert (turned[0, 0] == 255).all() and (turned[-1, -1] == 255).all()  # white corners
    assert np.abs(turned[12:20, 12:20].astype(int) - plain[12:20, 12:20]).mean() < 8
    assert not np.array_equal(reference_crop(image, mask, 32, -10.0), turned)  # the sign


def test_view_rotates_each_character_by_its_drawn_angle(sample):
    view = StoryMakerView(num_slots=2, reference_rotation=10)
    item = view(sample, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)  # the view's draws, in its order
    order = torch.randperm(2, generator=replay).tolist()
    angles = draw_angles(2, 10, replay)
    assert all(-10 <= a <= 10 for a in angles) and len(set(angles)) == 2
    masks = (sample.masks[order] & MASK_CHAR) > 0
    expected = np.stack([reference_crop(sample.image, m, 224, a) for m, a in zip(masks, angles)])
    assert np.array_equal(item["characters"].permute(0, 2, 3, 1).numpy(), expected)
    unturned = StoryMakerView(num_slots=2)(sample, torch.Generator().manual_seed(3))
    assert not torch.equal(item["characters"], unturned["characters"])
    assert torch.equal(item["face_crops"], unturned["face_crops"])  # faces stay aligned
    assert torch.equal(item["character_masks"], unturned["character_masks"])


def test_rotation_is_reproducible_per_seed(sample):
    view = StoryMakerView(num_slots=2, reference_rotation=10)
    first, again = (view(sample, torch.Generator().manual_seed(5))["characters"]
                    for _ in range(2))
    assert torch.equal(first, again)
    other = view(sample, torch.Generator().manual_seed(6))["characters"]
    assert not torch.equal(first, other)


def test_no_rotation_draws_nothing(sample):
    rng, replay = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    StoryMakerView(num_slots=2)(sample, rng)
    torch.randperm(2, generator=replay)
    assert torch.equal(rng.get_state(), replay.get_state())  # streams without it unchanged


def test_negative_rotation_is_refused():
    with pytest.raises(ValueError, match="reference_rotation"):
        StoryMakerView(reference_rotation=-5)
