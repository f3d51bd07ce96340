"""PortraitBooth's losses as functions of tensors (papers/portraitbooth.txt Sec. 4.2-4.4):
the one-step x̂0 (Eq. 5), the identity loss (Eq. 6), the face crop of x̂0 and the
localisation loss of the cross-attention maps (Eq. 7). ``ldm_ext/methods/portraitbooth.py``
gathers their inputs from a batch."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def predicted_x0(scheduler, noisy: torch.Tensor, pred: torch.Tensor,
                 timesteps: torch.Tensor) -> torch.Tensor:
    """Eq. 5, one reverse step to ẑ0 from z_t (B, C, h, w) and the UNet output:
    ε-prediction ẑ0 = (z_t − √(1−ᾱ_t) ε_θ) / √ᾱ_t; v-prediction ẑ0 = √ᾱ_t z_t − √(1−ᾱ_t) v_θ
    (the same x̂0, written for the other target)."""
    alpha = scheduler.alphas_cumprod.to(noisy.device, torch.float32)[timesteps]
    alpha = alpha.view(-1, *([1] * (noisy.dim() - 1)))  # (B, 1, 1, 1)
    noisy, pred = noisy.float(), pred.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (noisy - (1 - alpha).sqrt() * pred) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * noisy - (1 - alpha).sqrt() * pred
    raise ValueError(f"unsupported prediction_type {kind!r}")


def identity_loss(reference: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Eq. 6 for t <= R_t: 1 − CosSim(φ(f), φ(x̂0^f)) per row of (E, D) features -> (E,)."""
    return 1 - F.cosine_similarity(reference.float(), generated.float(), dim=-1)


def crop_faces(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable crops: images (E, 3, H, W), boxes (E, 4) xyxy in pixels of those
    images -> (E, 3, size, size), each box resized to the square as a detector's crop is
    (facenet-pytorch ``extract_face`` with margin 0: the box, not a square around it)."""
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=images.dtype)[:, None],
                      boxes.to(images.dtype)], dim=1)  # (E, 5): batch index, x0, y0, x1, y1
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


def latent_window(box: torch.Tensor, latent_hw: tuple[int, int],
                  margin: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) latent pixels covering a normalised xyxy ``box`` plus ``margin``
    latent pixels of context on each side, inside the latent grid: what DIP's window
    decode hands the VAE decoder instead of the whole latent."""
    h, w = latent_hw
    x0, y0, x1, y1 = box.tolist()
    left, top = max(0, math.floor(x0 * w) - margin), max(0, math.floor(y0 * h) - margin)
    right, bottom = min(w, math.ceil(x1 * w) + margin), min(h, math.ceil(y1 * h) + margin)
    return top, max(bottom, top + 1), left, max(right, left + 1)


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
