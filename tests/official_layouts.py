"""The released checkpoints' key layouts and forwards, written from their public definitions
(IP-Adapter ``resampler.py`` / ``ip_adapter_faceid.py``, StoryMaker ``faceid_plus`` and
``LoRAIPAttnProcessor2_0``) independently of our modules: names and shapes to build random
checkpoints, and functional forwards over those names to compare our tokens against."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def perceiver_shapes(prefix: str, dim: int, depth: int, heads: int, emb: int, out: int,
                     queries: int | None = None, mult: int = 4) -> dict[str, tuple]:
    """Names and shapes of IP-Adapter's ``Resampler`` (``queries``) / ``FacePerceiverResampler``."""
    inner = 64 * heads
    shapes = {f"{prefix}proj_in.weight": (dim, emb), f"{prefix}proj_in.bias": (dim,),
              f"{prefix}proj_out.weight": (out, dim), f"{prefix}proj_out.bias": (out,),
              f"{prefix}norm_out.weight": (out,), f"{prefix}norm_out.bias": (out,)}
    if queries:
        shapes[f"{prefix}latents"] = (1, queries, dim)
    for i in range(depth):
        block = f"{prefix}layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            shapes[f"{block}{norm}.weight"] = shapes[f"{block}{norm}.bias"] = (dim,)
        shapes.update({f"{block}0.to_q.weight": (inner, dim),
                       f"{block}0.to_kv.weight": (2 * inner, dim),
                       f"{block}0.to_out.weight": (dim, inner),
                       f"{block}1.1.weight": (dim * mult, dim),
                       f"{block}1.3.weight": (dim, dim * mult)})
    return shapes


def faceid_shapes(prefix: str, cross: int, clip: int, depth: int) -> dict[str, tuple]:
    """FaceID-PlusV2 ``ProjPlusModel`` (4 tokens)."""
    shapes = {f"{prefix}proj.0.weight": (1024, 512), f"{prefix}proj.0.bias": (1024,),
              f"{prefix}proj.2.weight": (4 * cross, 1024), f"{prefix}proj.2.bias": (4 * cross,),
              f"{prefix}norm.weight": (cross,), f"{prefix}norm.bias": (cross,)}
    return {**shapes, **perceiver_shapes(f"{prefix}perceiver_resampler.", cross, depth,
                                         max(1, cross // 64), clip, cross)}


def storymaker_shapes(cross: int, clip: int, face_depth: int, dim: int, depth: int,
                      heads: int) -> dict[str, tuple]:
    """StoryMaker ``faceid_plus``: face tokens, ``resample``, positions, background."""
    shapes = {**faceid_shapes("", cross, clip, face_depth),
              **perceiver_shapes("resample.", dim, depth, heads, clip, cross, queries=16)}
    shapes.update({"pos_embed": (3, 20, cross), "bg_embed": (1, 20, cross),
                   "proj_out.weight": (cross, cross), "proj_out.bias": (cross,),
                   "norm_out.weight": (cross,), "norm_out.bias": (cross,)})
    return shapes


def adapter_shapes(unet, rank: int, lora: bool = True) -> dict[str, tuple]:
    """``ModuleList(attn_processors.values())`` of LoRA(IP)AttnProcessor: hidden sizes from
    the block index as IP-Adapter's ``set_ip_adapter`` computes them."""
    channels, cross, shapes = unet.config.block_out_channels, unet.config.cross_attention_dim, {}
    for i, name in enumerate(unet.attn_processors):
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        context = hidden if name.endswith("attn1.processor") else cross
        if lora:
            for proj, width in (("q", hidden), ("k", context), ("v", context), ("out", hidden)):
                shapes[f"{i}.to_{proj}_lora.down.weight"] = (rank, width)
                shapes[f"{i}.to_{proj}_lora.up.weight"] = (hidden, rank)
        if not name.endswith("attn1.processor"):
            shapes[f"{i}.to_k_ip.weight"] = shapes[f"{i}.to_v_ip.weight"] = (hidden, cross)
    return shapes


def random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.2 for k, s in shapes.items()}


def _perceiver(s: dict, p: str, media: Tensor, latents: Tensor, heads: int) -> Tensor:
    """IP-Adapter's perceiver forward over the released names (fp32 softmax, q·k scaled)."""
    media = F.linear(media, s[f"{p}proj_in.weight"], s[f"{p}proj_in.bias"])
    i = 0
    while f"{p}layers.{i}.0.to_q.weight" in s:
        b = f"{p}layers.{i}."
        x = F.layer_norm(media, media.shape[-1:], s[f"{b}0.norm1.weight"], s[f"{b}0.norm1.bias"])
        lat = F.layer_norm(latents, latents.shape[-1:], s[f"{b}0.norm2.weight"],
                           s[f"{b}0.norm2.bias"])
        q = F.linear(lat, s[f"{b}0.to_q.weight"])
        k, v = F.linear(torch.cat([x, lat], 1), s[f"{b}0.to_kv.weight"]).chunk(2, -1)
        q, k, v = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))
        w = torch.softmax((q * scale) @ (k * scale).transpose(-2, -1), dim=-1)
        out = (w @ v).permute(0, 2, 1, 3).reshape(lat.shape[0], lat.shape[1], -1)
        latents = F.linear(out, s[f"{b}0.to_out.weight"]) + latents
        h = F.layer_norm(latents, latents.shape[-1:], s[f"{b}1.0.weight"], s[f"{b}1.0.bias"])
        latents = F.linear(F.gelu(F.linear(h, s[f"{b}1.1.weight"])), s[f"{b}1.3.weight"]) + latents
        i += 1
    out = F.linear(latents, s[f"{p}proj_out.weight"], s[f"{p}proj_out.bias"])
    return F.layer_norm(out, out.shape[-1:], s[f"{p}norm_out.weight"], s[f"{p}norm_out.bias"])


def faceid_forward(s: dict, p: str, ids: Tensor, face: Tensor, cross: int,
                   scale: float = 1.0) -> Tensor:
    """``ProjPlusModel(..., shortcut=True, scale)``: (K, 4, cross)."""
    x = F.linear(F.gelu(F.linear(ids, s[f"{p}proj.0.weight"], s[f"{p}proj.0.bias"])),
                 s[f"{p}proj.2.weight"], s[f"{p}proj.2.bias"]).reshape(-1, 4, cross)
    x = F.layer_norm(x, (cross,), s[f"{p}norm.weight"], s[f"{p}norm.bias"])
    return x + scale * _perceiver(s, f"{p}perceiver_resampler.", face, x, max(1, cross // 64))


def resampler_forward(s: dict, p: str, media: Tensor, heads: int) -> Tensor:
    return _perceiver(s, p, media, s[f"{p}latents"].repeat(media.shape[0], 1, 1), heads)


def storymaker_forward(s: dict, ids: Tensor, chars: Tensor, faces: Tensor, cross: int,
                       heads: int) -> Tensor:
    """``faceid_plus.forward`` for the N characters of one image: ((N+1)·20, cross)."""
    cat = torch.cat([faceid_forward(s, "", ids, faces, cross),
                     resampler_forward(s, "resample.", chars, heads)], 1)
    cat = cat + s["pos_embed"][:len(ids)]
    res = F.layer_norm(F.linear(cat, s["proj_out.weight"], s["proj_out.bias"]), (cross,),
                       s["norm_out.weight"], s["norm_out.bias"]) + cat
    return torch.cat([s["bg_embed"], res]).flatten(0, 1)
