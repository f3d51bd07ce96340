"""The shared identity loss on x̂0 (ldm_ext/identity_loss.py) by hand: one-step x̂0, the
(window) decode of the face box, the crop and 1 − cos against the reference."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm_ext.identity_loss import decode_faces, x0_identity_loss


class PointwiseVAE(nn.Module):
    """A decoder that doubles the resolution pixel by pixel and keeps 3 channels: a window
    decodes to exactly the matching part of the full decode."""

    dtype = torch.float32
    config = SimpleNamespace(scaling_factor=0.5)

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=F.interpolate(z, scale_factor=2, mode="nearest"))


def halves() -> torch.Tensor:
    """(1, 3, 4, 4) x̂0: channel 0 = 1 on the left half, channel 1 = 1 on the right."""
    z0 = torch.zeros(1, 3, 4, 4)
    z0[0, 0, :, :2] = 1
    z0[0, 1, :, 2:] = 1
    return z0


BOXES = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]])  # left, right half


@pytest.mark.parametrize("margin", [None, 0, 1])
def test_decode_faces_crops_each_box_of_the_decoded_latent(margin):
    """Latent / 0.5 decoded at 2 px per latent: the left box reads (2, 0, 0), the right
    (0, 2, 0), whether the whole latent or only each window is decoded."""
    faces = decode_faces(PointwiseVAE(), halves().expand(2, -1, -1, -1), BOXES, 2, 2, margin)
    assert faces.shape == (2, 3, 2, 2)
    torch.testing.assert_close(faces.mean(dim=(2, 3)),
                               torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))


def test_x0_identity_loss_hand_computed_and_differentiable():
    """ᾱ = 0.64, ε-prediction 0.5: z_t = 0.8 x̂0 + 0.3 inverts to the halves; embedding =
    channel means: (2, 0, 0) vs reference (1, 1, 0) -> 1 − 1/√2; (0, 2, 0) vs (0, 0, 1) -> 1."""
    sched = SimpleNamespace(alphas_cumprod=torch.tensor([0.64]),
                            config=SimpleNamespace(prediction_type="epsilon"))
    z0 = halves().expand(2, -1, -1, -1)
    pred = torch.full_like(z0, 0.5, requires_grad=True)
    noisy = 0.8 * z0 + 0.6 * 0.5
    reference = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    losses = x0_identity_loss(sched, PointwiseVAE(), 2, lambda f: f.mean(dim=(2, 3)), 2,
                              noisy, pred, torch.tensor([0, 0]), reference, BOXES, margin=1)
    torch.testing.assert_close(losses, torch.tensor([1 - 1 / math.sqrt(2), 1.0]))
    losses.sum().backward()
    assert pred.grad.abs().sum() > 0
