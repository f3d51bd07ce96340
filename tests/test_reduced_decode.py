"""Large sources decoded at the scale training needs (libjpeg's reduced decoding): the
training sample matches the full decode's, geometry and masks included."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.codec import decode_sample, encode_sample
from datamodules.demo import demo_sample, with_fallback_masks
from datamodules.schema import validate
from datamodules.transforms import ResizeCrop


@pytest.fixture(scope="module")
def large() -> dict:
    """A prepared-like sample at 1024 x 768 (several people, masks), as tar members."""
    sample = with_fallback_masks(demo_sample(3, seed=2, hw=(1024, 768)))
    return encode_sample(validate(sample), quality=95)


@pytest.mark.parametrize("side, stored_hw", [(256, (512, 384)), (128, (256, 192)),
                                             (96, (128, 96)), (400, (1024, 768))])
def test_the_decoded_size_keeps_the_shorter_side_at_the_training_side(large, side, stored_hw):
    assert decode_sample(large, min_side=side).hw == stored_hw  # 1/2, 1/4, 1/8, full


def test_a_reduced_decode_trains_on_the_same_sample(large):
    full, reduced = decode_sample(large), decode_sample(large, min_side=256)
    assert reduced.hw == (512, 384) and reduced.num_faces == full.num_faces >= 2
    crop = ResizeCrop(256, random_crop=True, flip_prob=0.5)
    a = crop(validate(full), torch.Generator().manual_seed(5))
    b = crop(validate(reduced), torch.Generator().manual_seed(5))
    assert np.abs(a.image.astype(int) - b.image).mean() < 2.0  # of 255
    assert np.allclose(a.boxes, b.boxes, atol=0.05) and np.allclose(a.landmarks, b.landmarks,
                                                                    atol=0.05)
    for p, q in zip(a.people, b.people):
        assert np.allclose(p.body, q.body, atol=0.05)
    assert a.masks.shape == b.masks.shape and (a.masks == b.masks).mean() > 0.98
    assert np.array_equal(a.crops, b.crops) and a.caption == b.caption


def test_png_sources_and_small_jpegs_decode_at_full_size(large):
    png = io.BytesIO()
    Image.fromarray(decode_sample(large).image).save(png, format="PNG")
    assert decode_sample({**large, "jpg": png.getvalue()}, min_side=128).hw == (1024, 768)
    small = encode_sample(validate(demo_sample(0, hw=(300, 400))))
    assert decode_sample(small, min_side=256).hw == (300, 400)  # 150 < 256: full size
