"""Softmax maps of chosen attention layers, kept for attention losses and plots.

Only the layers the store wants materialise their softmax (the others run the fused
`scaled_dot_product_attention`), and the maps keep their autograd graph so the losses of
SeFi-IDE (Eq. 4), StoryMaker (Eq. 9-12) and PortraitBooth (Eq. 7) backprop through them.
The store is passed per forward in the `AttentionContext`, never parked on a processor.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionStore:
    """Records softmax maps of chosen layers for losses and plots. Only those layers
    materialise softmax; the processor asks `store.wants(name)`.
    Maps are stored resized to (size, size) spatially:  (B, heads, K, size, size), grads kept
    (losses backprop through them).

    With ``accumulate=True`` (plots of a whole sampling run) every record is added instead:
    maps are detached and averaged over heads, ``maps[name]`` holds their running sum
    (B, 1, K, size, size) and :meth:`averaged` the mean over records and layers.

    Args:
        layers: layer names to record, or a predicate on the name (e.g.
            `lambda n: n.endswith("attn2")`). Names are the processor names given by
            `install_processors`; image-attention maps of decoupled layers are `"<name>:ip"`.
        size: side of the stored maps (32 in SeFi-IDE); None keeps each layer's own grid
            (h, w), for a loss that compares every layer at its resolution.
        accumulate: sum the records of each layer (no grads) instead of keeping the last.
        keys: key positions to keep, in this order (default all): a loss that reads the
            maps of a few tokens need not resize, store and backprop through all of them.
    """

    def __init__(self, layers: Callable[[str], bool] | Iterable[str], size: int | None = 32,
                 accumulate: bool = False, keys: Iterable[int] | None = None):
        if callable(layers):
            self._wants = layers
        else:
            chosen = frozenset(layers)
            self._wants = chosen.__contains__
        self.size, self.accumulate = size, accumulate
        self.keys = None if keys is None else torch.as_tensor(list(keys), dtype=torch.long)
        self.maps: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def wants(self, name: str) -> bool:
        """Whether the layer `name` must materialise and record its softmax."""
        return bool(self._wants(name))

    def record(self, name: str, probs: Tensor, hw: tuple[int, int]) -> None:
        """probs (B, heads, Q=h*w, K). Stored as (B, heads, K, size, size) (K: the chosen
        ``keys`` when given); a second record of the same name (e.g. gradient-checkpoint
        recomputation) replaces the first."""
        if self.keys is not None:
            probs = probs.index_select(-1, self.keys.to(probs.device))  # (B, heads, Q, K')
        batch, heads, queries, keys = probs.shape
        h, w = hw
        if h * w != queries:
            raise ValueError(f"layer {name}: grid {hw} does not match {queries} queries")
        maps = probs.transpose(2, 3).reshape(batch * heads, keys, h, w)  # (B*heads, K, h, w)
        if self.size is not None and (h, w) != (self.size, self.size):
            maps = F.interpolate(maps, size=(self.size, self.size), mode="bilinear",
                                 align_corners=False)
        maps = maps.view(batch, heads, keys, *maps.shape[-2:])
        if self.accumulate:
            maps = maps.detach().float().mean(1, keepdim=True)  # (B, 1, K, size, size)
            maps = maps + self.maps[name] if name in self.maps else maps
        self.maps[name] = maps
        self.counts[name] = self.counts.get(name, 0) + 1

    def clear(self) -> None:
        """Forget all maps (call before each forward whose maps a loss reads)."""
        self.maps.clear()
        self.counts.clear()

    def averaged(self) -> Tensor:
        """(B, K, size, size): the maps averaged over heads, records and layers (every
        recorded layer weighs the same)."""
        if not self.maps:
            raise ValueError("no attention maps recorded: check the layer names the store wants")
        means = [m.detach().float().mean(1) / (self.counts[n] if self.accumulate else 1)
                 for n, m in self.maps.items()]
        return torch.stack(means).mean(0)

    def stacked(self) -> Tensor:
        """(layers, B, heads, K, size, size) in recording order; all maps must share
        batch, heads and keys."""
        if not self.maps:
            raise ValueError("no attention maps recorded: check the layer names the store wants")
        shapes = {tuple(m.shape) for m in self.maps.values()}
        if len(shapes) > 1:
            raise ValueError(f"recorded maps differ in shape {sorted(shapes)}; stack them by group")
        return torch.stack(list(self.maps.values()))
