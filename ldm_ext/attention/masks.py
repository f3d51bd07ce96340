"""Face boxes -> per-resolution key masks and attention biases (InstantFamily Eq. 4-8).

The key axis of every cross-attention layer is the embedding stack of Eq. 4-5: the text
tokens, then one group of face tokens per face slot (`TokenLayout`). Eq. 6 masks the
logits of face n's tokens with `m_fn`, face n's detector box enlarged by a 25 % margin,
resized to each UNet resolution. `build_face_masks` builds those masks once per batch,
for every resolution, together with the additive biases the fast processor needs.

Two choices the paper leaves open: the margin is added to the raw box, which may overhang
the image (a face cut by the edge or by a crop), and only the result is clipped, so a cut
face keeps the region its whole box gives; and a face too small to cover any pixel centre
at a coarse resolution keeps the pixel under its centre there, so no face loses its tokens
at a level (four faces on 512 x 512 cover no 8 x 8 pixel otherwise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

MODES = ("multiply", "hard")


@dataclass(frozen=True)
class TokenLayout:
    """Key axis of the embedding stack: num_text text tokens then num_slots groups of
    tokens_per_face face tokens (InstantFamily Eq. 4-5)."""

    num_text: int
    num_slots: int
    tokens_per_face: int

    @property
    def total(self) -> int:
        """Length of the key axis."""
        return self.num_text + self.num_slots * self.tokens_per_face

    def face_slice(self, slot: int) -> slice:
        """Key positions of face slot `slot` (0-based)."""
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"face slot {slot} out of range [0, {self.num_slots})")
        start = self.num_text + slot * self.tokens_per_face
        return slice(start, start + self.tokens_per_face)


def expand_boxes(boxes: Tensor, margin: float = 0.25) -> Tensor:
    """(…,4) normalised xyxy, raw (may overhang [0,1]) -> width and height scaled by
    (1+margin) about the centre, then clipped to [0,1] (the 25 % margin of InstantFamily
    Sec. 3.4; enlarging before clipping keeps a cut face's region where its box says)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # (…, 2) cx, cy
    half = (boxes[..., 2:] - boxes[..., :2]) * (1 + margin) / 2  # (…, 2) half w, h
    return torch.cat([centre - half, centre + half], dim=-1).clamp(0.0, 1.0)


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """(B,N,4) normalised xyxy -> (B,N,height,width) float {0,1}: 1 where the pixel centre
    lies inside the box (half-open [x0, x1) x [y0, y1), so boxes that share an edge do not
    overlap)."""
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))  # each (B, N, 1)
    inside_y = (ys >= y0) & (ys < y1)  # (B, N, height)
    inside_x = (xs >= x0) & (xs < x1)  # (B, N, width)
    return (inside_y[..., :, None] & inside_x[..., None, :]).to(boxes.dtype)


def centre_pixels(boxes: Tensor, height: int, width: int) -> Tensor:
    """(B,N,4) normalised xyxy -> (B,N,height,width) float {0,1}, one-hot at the pixel
    whose cell holds the box centre (the nearest pixel centre; clamped to the grid)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # (B, N, 2) cx, cy
    col = (centre[..., 0] * width).floor().long().clamp(0, width - 1)  # (B, N)
    row = (centre[..., 1] * height).floor().long().clamp(0, height - 1)  # (B, N)
    onehot = torch.zeros(*boxes.shape[:-1], height * width, device=boxes.device,
                         dtype=boxes.dtype)  # (B, N, height*width)
    onehot.scatter_(-1, (row * width + col)[..., None], 1.0)
    return onehot.unflatten(-1, (height, width))


def face_regions(boxes: Tensor, valid: Tensor, height: int, width: int) -> Tensor:
    """(B,N,4) normalised xyxy (margin applied, clipped) and (B,N) valid -> (B,N,height,
    width) float {0,1}: ``box_masks``, and for a valid face that covers no pixel centre,
    its centre's pixel, so every face keeps a region at every resolution (Eq. 6's m_fn)."""
    region = box_masks(boxes, height, width)  # (B, N, h, w)
    empty = (region.flatten(2).amax(-1) == 0) & valid  # (B, N)
    return torch.where(empty[..., None, None], centre_pixels(boxes, height, width), region)


def level_sizes(latent_hw: tuple[int, int], num_levels: int) -> list[tuple[int, int]]:
    """Query grids of the UNet resolutions: latent_hw halved num_levels-1 times, rounding
    up as a stride-2, padding-1 convolution does."""
    sizes = [tuple(latent_hw)]
    for _ in range(num_levels - 1):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def query_grid(num_queries: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of the query grid with num_queries pixels: the level of latent_hw that has
    that many pixels, or the square grid when latent_hw is unknown."""
    if latent_hw is None:
        side = math.isqrt(num_queries)
        if side * side != num_queries:
            raise ValueError(f"{num_queries} queries are not a square grid; pass latent_hw")
        return side, side
    for h, w in level_sizes(latent_hw, 1 + max(latent_hw).bit_length()):
        if h * w == num_queries:
            return h, w
    raise ValueError(f"no downsampling of latent grid {tuple(latent_hw)} has {num_queries} pixels")


@dataclass
class FaceMasks:
    """Per-batch key masks for masked cross-attention, built ONCE per batch for every
    latent resolution (Eq. 6-8) and passed to all layers.

    `regions[q]` holds m_fn at the resolution with q pixels. On construction each
    resolution also gets its additive attention bias (see `bias`), so layers only look
    them up.
    """

    layout: TokenLayout
    mode: str  # "multiply" (Eq. 6 literally, default) | "hard" (-inf)
    valid: Tensor  # (B, N) bool, False = empty slot
    regions: dict[int, Tensor]  # query length h*w -> (B, N, h*w) float {0,1}
    latent_hw: tuple[int, int] | None = None  # full-resolution grid, for maps of non-square latents
    _biases: dict[int, Tensor] = field(default_factory=dict, init=False, repr=False)
    _cast: dict[tuple, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.layout.num_text < 1:
            raise ValueError("masked attention needs text tokens: a pixel must keep some key")
        if self.valid.shape[1] != self.layout.num_slots:
            raise ValueError(f"valid has {self.valid.shape[1]} slots, "
                             f"layout {self.layout.num_slots}")
        self._biases = {q: self._build_bias(region) for q, region in self.regions.items()}

    def region(self, num_queries: int) -> Tensor:
        """(B, N, num_queries) face masks at the resolution with num_queries pixels."""
        if num_queries not in self.regions:
            raise KeyError(f"no face mask for {num_queries} queries; built for "
                           f"{sorted(self.regions)} (check latent_hw and num_levels of "
                           "build_face_masks)")
        return self.regions[num_queries]

    def bias(self, num_queries: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Additive attention bias (B, 1, Q, K') broadcast over heads, cached per dtype/device.

        hard: K' = layout.total; 0 where a key is kept, -inf for face n's tokens outside
        face n or in an empty slot.
        multiply: K' = layout.total + N, the last N being one virtual key per face (zero key
        vector, value = mean of face n's values). Outside face n, Eq. 6 sets the logits of
        face n's F tokens to 0, so they add F·exp(0)·mean(V_n) to the softmax sums: exactly
        the virtual key with bias log F. So face tokens are -inf outside their face, the
        virtual key is -inf inside it, log F outside, and both are -inf for an empty slot.
        """
        self.region(num_queries)
        key = (num_queries, dtype, torch.device(device))
        if key not in self._cast:
            self._cast[key] = _aligned(self._biases[num_queries].to(device=device, dtype=dtype))
        return self._cast[key]

    def _build_bias(self, region: Tensor) -> Tensor:
        lay, (batch, _, num_q) = self.layout, region.shape
        keep = region.bool() & self.valid[..., None]  # (B, N, Q)
        neg_inf = torch.tensor(-math.inf, device=region.device)
        faces = torch.where(keep, 0.0, neg_inf)  # (B, N, Q)
        faces = faces.repeat_interleave(lay.tokens_per_face, dim=1)  # (B, N*F, Q)
        parts = [region.new_zeros(batch, num_q, lay.num_text), faces.transpose(1, 2)]
        if self.mode == "multiply":
            outside = ~region.bool() & self.valid[..., None]  # (B, N, Q)
            virtual = torch.where(outside, math.log(lay.tokens_per_face), neg_inf)
            parts.append(virtual.transpose(1, 2))  # (B, Q, N)
        return torch.cat(parts, dim=-1).unsqueeze(1)  # (B, 1, Q, K')


def _aligned(bias: Tensor, multiple: int = 16) -> Tensor:
    """Same values, last-dim stride rounded up to `multiple`: CUDA SDPA kernels want an
    aligned mask and otherwise pad a copy on every call."""
    keys = bias.shape[-1]
    return torch.nn.functional.pad(bias, (0, -keys % multiple))[..., :keys]


def build_face_masks(boxes: Tensor, valid: Tensor, layout: TokenLayout,
                     latent_hw: tuple[int, int], num_levels: int = 4,
                     mode: str = "multiply", margin: float = 0.25) -> FaceMasks:
    """Face masks of one batch at every UNet resolution (Eq. 6-8).

    Args:
        boxes: (B, N, 4) normalised xyxy of the raw detector box, not clipped (it may
            overhang [0, 1]); the margin is applied here, then the result is clipped.
        valid: (B, N) bool, False for an empty (padding) slot.
        layout: the key axis (text tokens, N face slots, tokens per face).
        latent_hw: full-resolution latent grid (h, w); masks are built at latent_hw,
            latent_hw/2, /4, /8 (num_levels levels, sizes rounded up). A valid face keeps
            at least its centre's pixel at every level (``face_regions``).
        mode: "multiply" (Eq. 6 literally) or "hard" (masked logits -inf).
        margin: relative enlargement of each box's width and height (25 % in the paper).
    """
    if boxes.shape[:2] != valid.shape:
        raise ValueError(f"boxes {tuple(boxes.shape)} and valid {tuple(valid.shape)} disagree")
    grown = expand_boxes(boxes.float(), margin)  # (B, N, 4) in [0, 1]
    regions = {}
    for h, w in level_sizes(latent_hw, num_levels):
        regions[h * w] = face_regions(grown, valid.bool(), h, w).flatten(2)  # (B, N, h*w)
    return FaceMasks(layout=layout, mode=mode, valid=valid.bool(), regions=regions,
                     latent_hw=tuple(latent_hw))
