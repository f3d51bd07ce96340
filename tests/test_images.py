"""Attention-map overlays (per-identity attention shares, the overlay row) and the cells of
the sample grid."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks.images import attention_overlay, identity_shares, sample_cells
from ldm_ext.attention import TokenLayout
from ldm_ext.perception.pose import SLOT_COLORS, slot_color

LAYOUT = TokenLayout(num_text=3, num_slots=2, tokens_per_face=2)  # keys: t t t a a b b
GROUPS = [slice(0, 3), LAYOUT.face_slice(0), LAYOUT.face_slice(1)]


def halves_maps(size: int = 4) -> torch.Tensor:
    """(K=7, S, S) softmax rows: the left half attends to face 0, the right half to face 1,
    each pixel keeping 0.2 on the text."""
    maps = torch.zeros(LAYOUT.total, size, size)
    maps[:3] = 0.2 / 3
    maps[3:5, :, : size // 2] = 0.4
    maps[5:7, :, size // 2:] = 0.4
    return maps


def test_identity_shares_sum_each_group_of_keys():
    shares = identity_shares(halves_maps(), GROUPS)
    assert shares.shape == (3, 4, 4)
    torch.testing.assert_close(shares.sum(0), torch.ones(4, 4))  # softmax rows
    torch.testing.assert_close(shares[0], torch.full((4, 4), 0.2))
    assert (shares[1, :, :2] == 0.8).all() and (shares[1, :, 2:] == 0).all()
    assert (shares[2, :, 2:] == 0.8).all() and (shares[2, :, :2] == 0).all()


def test_overlay_tints_each_pixel_with_the_identity_it_attends_to():
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    row = np.asarray(attention_overlay(image, identity_shares(halves_maps(), GROUPS)))
    assert row.shape == (32, 4 * 32, 3)  # image, overlay, one heat map per identity
    assert (row[:, :32] == 128).all()
    expected = [0.2 * 128 + 0.8 * np.asarray(SLOT_COLORS[k]) for k in (0, 1)]
    np.testing.assert_allclose(row[16, 32 + 2], expected[0], atol=1)  # left: identity 0
    np.testing.assert_allclose(row[16, 64 - 3], expected[1], atol=1)  # right: identity 1
    heat0, heat1 = row[:, 64:96].astype(int), row[:, 96:].astype(int)
    assert heat0[:, :8].sum() > heat0[:, 24:].sum() and heat1[:, 24:].sum() > heat1[:, :8].sum()


def test_overlay_of_more_identities_than_the_colour_table():
    groups = [slice(0, 1)] + [slice(k, k + 1) for k in range(1, 15)]  # text + 14 identities
    maps = torch.zeros(15, 4, 4)
    maps[14] = 1.0  # every pixel attends to identity 14 (index 13)
    row = np.asarray(attention_overlay(Image.new("RGB", (8, 8)), identity_shares(maps, groups)))
    np.testing.assert_allclose(row[4, 8 + 4], slot_color(13), atol=1)


class RecordingPipe:
    """A pipeline that records each call: (prompt, number of identities) -> a blank image."""

    def __init__(self, legend: bool) -> None:
        self.calls, self.draws_legend = [], legend

    def legend(self, identities, size):
        return Image.new("RGB", size, "red") if self.draws_legend else None

    def __call__(self, prompt, identities, *, size, steps, guidance, generator, progress):
        assert not self.module.training  # sampled in eval mode
        self.calls.append((prompt, 0 if identities is None else len(identities)))
        return Image.new("RGB", size)


class ToyModule(torch.nn.Module):
    """What ``sample_cells`` reads of a method: its config and ``pipeline()``."""

    def __init__(self, pipe: RecordingPipe) -> None:
        super().__init__()
        self.pipe = pipe
        self.cfg = SimpleNamespace(
            data=SimpleNamespace(resolution=8),
            method=SimpleNamespace(sample_num_ids=[1, 3], sample_prompts=["a", "b"],
                                   sample_steps=2, guidance_scale=3.0))

    def pipeline(self):
        self.pipe.module = self
        return self.pipe


@pytest.mark.parametrize("legend", [True, False])
def test_sample_cells_are_the_legend_then_prompts_by_identity_count(legend):
    module = ToyModule(RecordingPipe(legend)).train()
    ids = torch.zeros(3, 3, 4, 4)
    cells, cols = sample_cells(module, ids, torch.Generator().manual_seed(0))
    assert cols == 2 and module.training  # training mode restored
    assert module.pipe.calls == [("a", 1), ("a", 3), ("b", 1), ("b", 3)]
    assert len(cells) == 4 + 2 * legend


def test_sample_cells_without_identities_are_each_prompt_once():
    module = ToyModule(RecordingPipe(legend=True))
    cells, cols = sample_cells(module, None, torch.Generator().manual_seed(0))
    assert (len(cells), cols) == (2, 1) and module.pipe.calls == [("a", 0), ("b", 0)]
