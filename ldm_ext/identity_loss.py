"""Identity loss on the one-step x̂0 (PortraitBooth's DIP, Eq. 5-6), for any
method that trains an identity into the UNet: ẑ0 from the UNet output, only each face's
latent window decoded, the face cropped at its box and compared with the reference through a
differentiable face encoder. Gradients reach the UNet output (and what produced it) through
the frozen decoder and encoder."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align


def predicted_x0(scheduler, noisy: torch.Tensor, pred: torch.Tensor,
                 timesteps: torch.Tensor) -> torch.Tensor:
    """One reverse step to ẑ0 from z_t (B, C, h, w) and the UNet output:
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
    """1 − CosSim(φ(f), φ(x̂0^f)) per row of (E, D) features -> (E,)."""
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
    latent pixels of context on each side, inside the latent grid: what the window decode
    hands the VAE decoder instead of the whole latent."""
    h, w = latent_hw
    x0, y0, x1, y1 = box.tolist()
    left, top = max(0, math.floor(x0 * w) - margin), max(0, math.floor(y0 * h) - margin)
    right, bottom = min(w, math.ceil(x1 * w) + margin), min(h, math.ceil(y1 * h) + margin)
    return top, max(bottom, top + 1), left, max(right, left + 1)


def decode_faces(vae: nn.Module, z0: torch.Tensor, boxes: torch.Tensor, pixels_per_latent: int,
                 size: int, margin: int | None) -> torch.Tensor:
    """x̂0^f: ẑ0 (E, C, h, w) decoded and cropped at the normalised xyxy boxes (E, 4) ->
    (E, 3, size, size) in the decoder's range, differentiably. ``margin`` None decodes the
    whole latent; an int decodes only each box's latent window plus ``margin`` latents of
    context (the decoder's cost follows the area)."""
    (h, w), z0 = z0.shape[-2:], z0.to(vae.dtype) / vae.config.scaling_factor
    pixel_boxes = boxes * boxes.new_tensor([w, h, w, h]) * pixels_per_latent  # (E, 4)
    if margin is None:
        return crop_faces(vae.decode(z0).sample.float(), pixel_boxes, size)
    crops = []
    for latent, box, pixel_box in zip(z0, boxes, pixel_boxes):
        y0, y1, x0, x1 = latent_window(box, (h, w), margin)
        pixels = vae.decode(latent[None, :, y0:y1, x0:x1]).sample.float()  # (1, 3, H', W')
        shift = box.new_tensor([x0, y0, x0, y0]) * pixels_per_latent
        crops.append(crop_faces(pixels, (pixel_box - shift)[None], size))
    return torch.cat(crops)


def x0_identity_loss(scheduler, vae: nn.Module, pixels_per_latent: int,
                     embed: Callable[[torch.Tensor], torch.Tensor], size: int,
                     noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor,
                     reference: torch.Tensor, boxes: torch.Tensor,
                     margin: int | None) -> torch.Tensor:
    """Per entry (E,): 1 − cos(reference, embed(face of x̂0)). noisy / pred (E, C, h, w)
    the noised latent and UNet output of the entry's sample, t (E,), reference (E, D) the
    reference features, boxes (E, 4) normalised xyxy; ``embed`` maps (E, 3, size, size)
    crops in [-1, 1] to (E, D) features and must be differentiable."""
    z0 = predicted_x0(scheduler, noisy, pred, t)  # (E, C, h, w)
    faces = decode_faces(vae, z0, boxes, pixels_per_latent, size, margin)
    return identity_loss(reference, embed(faces))
