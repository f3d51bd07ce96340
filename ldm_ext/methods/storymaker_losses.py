"""StoryMaker's losses (docs/methods.md §3): the attention loss (Eq. 9-12) on the image
cross-attention maps the store keeps, and the noise loss weighted by the person mask.

Token groups of the image prompt c_i (Eq. 7): group 0 is the background E_bg, group k the
k-th character slot; every group has L tokens. A sample's absent characters are masked out
of its attention (so their maps are 0) and out of its loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def group_maps(probs: Tensor, tokens_per_group: int) -> Tensor:
    """Eq. 10: A_k = Σ_{tokens of group k} P, with P (Eq. 9) averaged over heads.
    probs (B, heads, (N+1)·L, s, s) -> (B, N+1, s, s)."""
    maps = probs.float().mean(1)  # (B, (N+1)·L, s, s)
    return maps.unflatten(1, (-1, tokens_per_group)).sum(2)


def region_targets(masks: Tensor, valid: Tensor, hw: tuple[int, int],
                   form: str = "official") -> tuple[Tensor, Tensor]:
    """Targets M_k of Eq. 11 on an ``hw`` grid and which count: the background first, then
    each present character's area-resized mask.
    masks (B, N, H, W) {0, 1}, valid (B, N) -> targets (B, N+1, h, w), weights (B, N+1).

    The background is 1 − union of the characters. ``paper``: the union is taken on the
    full-resolution masks, then area-resized (overlapping characters count once).
    ``official``: 1 − min(1, Σ_k resized M_k), as the official trainer computes it; where
    characters overlap this is below 1 − union."""
    masks = masks.float() * valid[:, :, None, None]
    small = F.interpolate(masks, size=hw, mode="area")  # (B, N, h, w) coverage
    if form == "paper":
        union = F.interpolate(masks.amax(1, keepdim=True), size=hw, mode="area")
        background = 1 - union  # (B, 1, h, w)
    else:
        background = 1 - small.sum(1, keepdim=True).clamp(max=1)
    weights = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1).float()
    return torch.cat([background, small], dim=1), weights


def attention_loss(layer_probs: list[Tensor], masks: Tensor, valid: Tensor,
                   tokens_per_group: int, form: str = "official") -> Tensor:
    """L_attn averaged over the loss layers (Eq. 11-12), mean over the batch.

    layer_probs: per layer (B, heads, (N+1)·L, h, w) image-attention softmax maps on the
    layer's own grid (the store's ``"<layer>:ip"``). ``paper``: per layer 1/(N+1) Σ_k
    mean_px (A_k − M_k)² with the masks on that layer's grid, then 1/M Σ over layers.
    ``official``: A_k averaged over the layers first (on the coarsest of their grids), then
    (Σ_characters mean_px (A_k − M_k)² + mean_px (A_bg − M_bg)²) / N."""
    grids = {tuple(p.shape[-2:]) for p in layer_probs}
    targets = {hw: region_targets(masks, valid, hw, form) for hw in grids}  # hw -> (M, weights)
    weights = next(iter(targets.values()))[1]  # (B, N+1)
    if form == "official":
        grid = min(grids, key=lambda hw: hw[0] * hw[1])
        maps = torch.stack([F.interpolate(group_maps(p, tokens_per_group), size=grid,
                                          mode="area") for p in layer_probs]).mean(0)
        per_group = (maps - targets[grid][0]).pow(2).mean((-1, -2)) * weights  # (B, N+1)
        return (per_group.sum(1) / weights[:, 1:].sum(1).clamp(min=1)).mean()
    losses = []
    for probs in layer_probs:
        target = targets[tuple(probs.shape[-2:])][0]  # (B, N+1, h, w)
        per_group = (group_maps(probs, tokens_per_group) - target).pow(2).mean((-1, -2))
        losses.append(((per_group * weights).sum(1) / weights.sum(1)).mean())
    return torch.stack(losses).mean()


def person_weights(masks: Tensor, valid: Tensor, keep: Tensor, latent_hw: tuple[int, int],
                   weight: float) -> Tensor:
    """(B, 1, h, w) noise-loss weights 1 + ``weight`` · person mask (the union of the present
    characters, area-resized to the latents), as the official trainer; samples whose
    characters were dropped (``keep`` (B,) False) weigh 1 everywhere."""
    union = (masks.float() * valid[:, :, None, None]).amax(1, keepdim=True)  # (B, 1, H, W)
    person = F.interpolate(union, size=latent_hw, mode="area")
    return 1 + weight * person * keep.float()[:, None, None, None]


def weighted_noise_loss(pred: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """mean(w · (ε − ε_θ)²) over every element; ``weights`` (B, 1, h, w) or None (Eq. 1)."""
    err = F.mse_loss(pred.float(), target.float(), reduction="none")
    return (err if weights is None else err * weights).mean()


def draw_drops(batch: int, p_characters: float, p_text: float, p_both: float,
               generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """IP-Adapter's joint drop: one uniform draw r per sample; characters are dropped for
    r < p_c, the text for p_c <= r < p_c + p_t, both for the next p_b.
    Returns (drop_characters (B,), drop_text (B,)) bool on the generator's device."""
    if p_characters + p_text + p_both > 1:
        raise ValueError(f"drop rates sum to {p_characters + p_text + p_both} > 1")
    r = torch.rand(batch, generator=generator, device=generator.device)
    both = (r >= p_characters + p_text) & (r < p_characters + p_text + p_both)
    return (r < p_characters) | both, ((r >= p_characters) & (r < p_characters + p_text)) | both
