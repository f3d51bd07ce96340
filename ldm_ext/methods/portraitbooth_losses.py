"""PortraitBooth's losses as functions of tensors (PortraitBooth Sec. 4.2-4.4):
the localisation loss of the cross-attention maps (Eq. 7) here; DIP's one-step x̂0 (Eq. 5),
identity loss (Eq. 6) and face crop of x̂0 are shared (``ldm_ext/identity_loss.py``) and
re-exported under their PortraitBooth names. ``ldm_ext/methods/portraitbooth.py`` gathers
their inputs from a batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ldm_ext.identity_loss import crop_faces, identity_loss, latent_window, predicted_x0

__all__ = ["crop_faces", "identity_loss", "latent_window", "localization_terms", "predicted_x0"]


def localization_terms(maps: torch.Tensor, masks: torch.Tensor,
                       caps: torch.Tensor) -> torch.Tensor:
    """The bracket of Eq. 7 averaged over layers, one value per (token, mask) entry:
    1/N Σ_l [mean(A_l (1−M)) + mean(relu(cap − A_l) M)], means over all pixels.

    Args:
        maps: (N, E, S, S) cross-attention maps A_l of each entry's token at N layers,
            in [0, 1] (softmax over the keys, averaged over heads).
        masks: (E, S, S) face masks M in [0, 1].
        caps: (E,) truncation value β (identity tokens) or γ (expression tokens).
    Returns:
        (E,) per-entry loss, to be weighted by λ or μ.
    """
    outside = (maps * (1 - masks)).mean(dim=(-2, -1))  # (N, E)
    inside = (F.relu(caps[None, :, None, None] - maps) * masks).mean(dim=(-2, -1))  # (N, E)
    return (outside + inside).mean(0)
