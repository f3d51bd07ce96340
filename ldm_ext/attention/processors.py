"""diffusers attention processors shared by the four methods.

Installed with `model.set_attn_processor(...)` (see `install_processors`) on a
`UNet2DConditionModel` or `ControlNetModel`; per-batch inputs arrive as
`cross_attention_kwargs={"ctx": AttentionContext(...)}`. diffusers hands those kwargs to
self- and cross-attention layers alike, so every processor here names `ctx`.

- masked cross-attention, InstantFamily Eq. 6-8: softmax(M ⊙ QKᵀ/√d) V,
- decoupled cross-attention, IP-Adapter / StoryMaker Eq. 3,
- split K/V conditioning, SeFi-IDE Sec. III-C: keys from one prompt, values from another,
- softmax maps recorded for the layers an `AttentionStore` wants, and (detached) those of
  the same queries against other keys (`probe_states`: a reference map in the same pass).

The prelude/epilogue (spatial/group norm, 4-D reshape, norm_cross, attention_mask,
output projection, residual, rescale) follow diffusers' `AttnProcessor2_0`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm_ext.attention.masks import FaceMasks, TokenLayout, query_grid
from ldm_ext.attention.store import AttentionStore


@dataclass
class AttentionContext:
    """Per-batch inputs of every processor, passed as cross_attention_kwargs={"ctx": ctx}."""

    face_masks: FaceMasks | None = None  # masked cross-attention (InstantFamily)
    image_tokens: Tensor | None = None  # (B, M, D_img) decoupled layers (IP-Adapter/StoryMaker)
    ip_scale: float = 1.0  # gamma of StoryMaker Eq. 3
    # (B, 1, 1, M) bool, True = attend: image tokens each sample's decoupled layers see
    # (e.g. the token groups of absent characters are False); None: all of them
    image_mask: Tensor | None = None
    value_states: Tensor | None = None  # (B, T, D) split K/V (SeFi-IDE): values from this
    # tag -> other key inputs (B, T, D): the softmax of the layer's own queries against each
    # is recorded, detached, as "<name>:<tag>" when the store wants it; the layer's output
    # never sees them (a reference map computed in the same pass, e.g. SeFi-IDE Eq. 4)
    probe_states: dict[str, Tensor] | None = None
    store: AttentionStore | None = None
    latent_hw: tuple[int, int] | None = None  # full-resolution latent grid, for maps
    # (identity of the encoder states, them, the inputs built from them) of `_virtual_inputs`
    _virtual: tuple | None = field(default=None, init=False, repr=False)

    def grid(self, num_queries: int) -> tuple[int, int]:
        """(h, w) of a layer's query grid, from latent_hw (or the face masks' grid)."""
        hw = self.latent_hw
        if hw is None and self.face_masks is not None:
            hw = self.face_masks.latent_hw
        return query_grid(num_queries, hw)


_NO_EXTRAS = AttentionContext()


@dataclass
class _Prepared:
    """What the prelude hands to the attention core and the epilogue."""

    residual: Tensor
    hidden: Tensor  # (B, Q, C) queries' input after spatial/group norm
    context: Tensor  # (B, T, D) keys' input (hidden itself for self-attention)
    mask: Tensor | None  # (B, heads, Q or 1, T) additive attention_mask from diffusers
    shape4d: tuple[int, int, int, int] | None  # (B, C, H, W) when the input was 4-D
    is_cross: bool


def _prelude(attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None,
             attention_mask: Tensor | None, temb: Tensor | None) -> _Prepared:
    """Norms, 4-D -> (B, H*W, C) and diffusers' attention_mask, as in AttnProcessor2_0."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape4d = tuple(hidden_states.shape) if hidden_states.ndim == 4 else None
    if shape4d is not None:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)  # (B, H*W, C)
    is_cross = encoder_hidden_states is not None
    batch, keys = (encoder_hidden_states if is_cross else hidden_states).shape[:2]
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = _norm_context(attn, encoder_hidden_states) if is_cross else hidden_states
    return _Prepared(residual, hidden_states, context, attention_mask, shape4d, is_cross)


def _norm_context(attn, context: Tensor) -> Tensor:
    """The layer's norm_cross on encoder states (text or split values), when it has one."""
    return attn.norm_encoder_hidden_states(context) if attn.norm_cross else context


def _epilogue(attn, out: Tensor, prep: _Prepared) -> Tensor:
    """out (B, heads, Q, d) -> output projection, 4-D shape, residual, rescale."""
    out = out.transpose(1, 2).flatten(2)  # (B, Q, heads*d)
    out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
    if prep.shape4d is not None:
        out = out.transpose(1, 2).reshape(prep.shape4d)
    if attn.residual_connection:
        out = out + prep.residual
    if attn.rescale_output_factor != 1.0:  # x / 1.0 == x: skip a full pass over (B, Q, C)
        out = out / attn.rescale_output_factor
    return out


def _heads(attn, x: Tensor) -> Tensor:
    """(B, L, heads*d) -> (B, heads, L, d)."""
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def _attend(query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, scale: float,
            keep_probs: bool) -> tuple[Tensor, Tensor | None]:
    """softmax(QKᵀ·scale + bias) V over (B, heads, ·, d) inputs; the softmax (B, heads, Q, K)
    is materialised only when keep_probs, otherwise the fused SDPA kernel runs."""
    if not keep_probs:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)
        return out, None
    probs = _softmax(query, key, bias, scale)
    return probs @ value, probs


def _softmax(query: Tensor, key: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """softmax(QKᵀ·scale + bias) (B, heads, Q, K), in fp32 then the query's dtype; a
    boolean ``bias`` is a mask (True = attend, False = −∞), as SDPA reads one."""
    logits = query @ key.transpose(-1, -2) * scale  # (B, heads, Q, K)
    if bias is not None and bias.dtype == torch.bool:  # a boolean mask, as SDPA takes one
        logits = logits.masked_fill(~bias, float("-inf"))
    elif bias is not None:
        logits = logits + bias
    return logits.float().softmax(dim=-1).to(query.dtype)


@functools.lru_cache(maxsize=16)
def _virtual_mixer(layout: TokenLayout, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(K+N, K): identity on the real keys, then one row per face slot averaging its tokens."""
    mixer = torch.eye(layout.total + layout.num_slots, layout.total, dtype=dtype, device=device)
    for slot in range(layout.num_slots):
        mixer[layout.total + slot, layout.face_slice(slot)] = 1.0 / layout.tokens_per_face
    return mixer


def _add_virtual_keys(key: Tensor, value: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor]:
    """Append one virtual token per face slot along dim -2: zeros to the keys (the zero key,
    logit 0), the mean of the slot's tokens to the values (see `FaceMasks.bias`). One op
    each, as small ops dominate this layer's overhead. Works on (B, heads, K, d) projected
    keys/values and on (B, K, D) inputs of to_k/to_v alike; both keep their dtype (under
    autocast the product would not, and a cached pair must fit with and without it)."""
    key = F.pad(key, (0, 0, 0, layout.num_slots))  # (..., K+N, ·)
    # compiled: the graph builds the constant itself (dynamo traces past the cache anyway)
    build = _virtual_mixer.__wrapped__ if torch.compiler.is_compiling() else _virtual_mixer
    mixer = build(layout, value.dtype, value.device)  # (K+N, K)
    return key, (mixer @ value).to(value.dtype)  # (..., K+N, ·)


def _state_tag(tensor: Tensor) -> tuple[int, int | None]:
    """A tensor's identity and in-place version. Inference tensors keep no version counter,
    so an in-place edit of encoder states under inference_mode goes unseen."""
    return id(tensor), None if tensor.is_inference() else tensor._version


def _virtual_inputs(ctx: AttentionContext, layout: TokenLayout, keys_from: Tensor,
                    values_from: Tensor) -> tuple[Tensor, Tensor]:
    """(B, K+N, D) inputs of to_k / to_v with the virtual tokens appended: a bias-free to_k
    maps the zeros to the zero key, and to_v, being affine, maps the mean of a slot's tokens
    to the mean of its values. All cross-attention layers of a forward see the same encoder
    states, so the pair is built by the first layer and reused by the others, saving two ops
    per layer; not when autograd needs a graph through it (a pair cached in a checkpointed
    no_grad forward has none), nor under ``torch.compile``, whose graph shares the common
    subexpression by itself (the cache's identity checks would break the graph)."""
    if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and (keys_from.requires_grad or values_from.requires_grad)):
        return _add_virtual_keys(keys_from, values_from, layout)
    tag = (_state_tag(keys_from), _state_tag(values_from))
    if ctx._virtual is None or ctx._virtual[0] != tag:
        pair = _add_virtual_keys(keys_from, values_from, layout)
        ctx._virtual = (tag, (keys_from, values_from), pair)  # holding them keeps ids unique
    return ctx._virtual[2]


def _fold_virtual_probs(probs: Tensor, layout: TokenLayout) -> Tensor:
    """(B, heads, Q, K+N) -> (B, heads, Q, K): a virtual key's probability is shared equally
    by its F face tokens (each has logit 0 there), giving Eq. 6's softmax over real keys."""
    real, virtual = probs[..., :layout.total], probs[..., layout.total:]
    share = (virtual / layout.tokens_per_face).repeat_interleave(layout.tokens_per_face, dim=-1)
    return torch.cat([real[..., :layout.num_text], real[..., layout.num_text:] + share], dim=-1)


def _masked_attention(query: Tensor, key: Tensor, value: Tensor, faces: FaceMasks,
                      extra: Tensor | None, scale: float,
                      keep_probs: bool) -> tuple[Tensor, Tensor | None]:
    """InstantFamily Eq. 6 with SDPA and the per-batch bias of `FaceMasks.bias`; key and
    value (B, heads, K', d) already carry multiply mode's virtual tokens (`_keys_values`)."""
    layout, (batch, _, num_q, _) = faces.layout, query.shape
    bias = faces.bias(num_q, query.dtype, query.device)  # (B, 1, Q, K')
    if bias.shape[0] not in (1, batch):
        raise ValueError(f"face masks built for batch {bias.shape[0]}, layer sees {batch} "
                         "(classifier-free guidance doubles the batch: build masks for it)")
    if extra is not None:
        bias = bias + F.pad(extra, (0, bias.shape[-1] - extra.shape[-1]))
    out, probs = _attend(query, key, value, bias, scale, keep_probs)
    if probs is not None and faces.mode == "multiply":
        probs = _fold_virtual_probs(probs, layout)
    return out, probs


def _record(ctx: AttentionContext, name: str, probs: Tensor, prep: _Prepared) -> None:
    hw = prep.shape4d[2:] if prep.shape4d is not None else ctx.grid(probs.shape[2])
    ctx.store.record(name, probs, hw)


def _keys_values(attn, prep: _Prepared, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
    """Key and value (B, heads, T, d). In cross-attention the values come from
    ctx.value_states when given (split K/V), and multiply face masks append their N virtual
    tokens (T = K + N): to to_k/to_v's inputs, once per batch, when to_k maps zeros to the
    zero key (no bias, no norm_k, as in SD1.5/SDXL), else to the projected keys/values."""
    keys_from = values_from = prep.context
    if prep.is_cross and ctx.value_states is not None:
        if ctx.value_states.shape[:2] != prep.context.shape[:2]:
            raise ValueError("value_states must match encoder_hidden_states in batch and tokens")
        values_from = _norm_context(attn, ctx.value_states)
    faces = ctx.face_masks if prep.is_cross else None
    if faces is not None and keys_from.shape[1] != faces.layout.total:
        raise ValueError(f"{keys_from.shape[1]} keys but the token layout has "
                         f"{faces.layout.total}")
    virtual = faces is not None and faces.mode == "multiply"
    on_inputs = virtual and attn.to_k.bias is None and attn.norm_k is None
    if on_inputs:
        keys_from, values_from = _virtual_inputs(ctx, faces.layout, keys_from, values_from)
    key = _heads(attn, attn.to_k(keys_from))
    value = _heads(attn, attn.to_v(values_from))
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if virtual and not on_inputs:
        key, value = _add_virtual_keys(key, value, faces.layout)
    return key, value


def _text_attention(name: str, attn, prep: _Prepared,
                    ctx: AttentionContext) -> tuple[Tensor, Tensor]:
    """Query (B, heads, Q, d) and attention output (B, heads, Q, d) over the text keys,
    masked (ctx.face_masks) and with split values (ctx.value_states) in cross-attention."""
    query = _heads(attn, attn.to_q(prep.hidden))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    key, value = _keys_values(attn, prep, ctx)
    keep = ctx.store is not None and ctx.store.wants(name)
    if prep.is_cross and ctx.face_masks is not None:
        out, probs = _masked_attention(query, key, value, ctx.face_masks, prep.mask,
                                       attn.scale, keep)
    else:
        out, probs = _attend(query, key, value, prep.mask, attn.scale, keep)
    if keep:
        _record(ctx, name, probs, prep)
    if prep.is_cross and ctx.probe_states and ctx.store is not None:
        _record_probes(name, attn, query, prep, ctx)
    return query, out


@torch.no_grad()
def _record_probes(name: str, attn, query: Tensor, prep: _Prepared,
                   ctx: AttentionContext) -> None:
    """Record softmax(Q K_pᵀ/√d) of this layer's queries against the keys of each probe
    (ctx.probe_states) as "<name>:<tag>", without gradients; the output is untouched."""
    for tag, states in ctx.probe_states.items():
        probe = f"{name}:{tag}"
        if ctx.store.wants(probe):
            key = _heads(attn, attn.to_k(_norm_context(attn, states)))  # (B, heads, T, d)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            _record(ctx, probe, _softmax(query, key, prep.mask, attn.scale), prep)


class IdAttnProcessor:
    """No weights. Plain attention when ctx carries nothing; masked cross-attention when
    ctx.face_masks; split K/V when ctx.value_states; records maps when ctx.store wants
    this layer. Self-attention layers ignore face_masks/value_states."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 ctx: AttentionContext | None = None) -> Tensor:
        prep = _prelude(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        _, out = _text_attention(self.name, attn, prep, ctx or _NO_EXTRAS)
        return _epilogue(attn, out, prep)


class DecoupledAttnProcessor(nn.Module):
    """IP-Adapter / StoryMaker Eq. 3: Z = Attn(Q,K_t,V_t) + gamma * Attn(Q,K_i,V_i),
    K_i = to_k_ip(image_tokens), V_i = to_v_ip(image_tokens). Owns to_k_ip / to_v_ip.
    Records the image-attention softmax as f"{name}:ip" when the store wants it (StoryMaker
    Eq. 9-12 loss needs P = softmax(Q K_i^T/sqrt d)).

    The text branch is `IdAttnProcessor`'s (masks, split K/V and maps included). The image
    branch runs when ctx.image_tokens is given and ctx.ip_scale != 0.

    Args:
        name: layer name (keys of the attention store).
        hidden_size: output width of K_i/V_i (the layer's inner dim).
        cross_attention_dim: width of the text tokens.
        image_dim: width of the image tokens; defaults to cross_attention_dim.
    """

    def __init__(self, name: str, hidden_size: int, cross_attention_dim: int,
                 image_dim: int | None = None):
        super().__init__()
        self.name = name
        in_dim = cross_attention_dim if image_dim is None else image_dim
        self.to_k_ip = nn.Linear(in_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(in_dim, hidden_size, bias=False)

    # diffusers reads the processor's __call__ signature to decide which kwargs to pass,
    # so it must name `ctx`; nn.Module.__call__ (hooks) then runs forward.
    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 ctx: AttentionContext | None = None) -> Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask,
                                temb, ctx)

    def forward(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                attention_mask: Tensor | None = None, temb: Tensor | None = None,
                ctx: AttentionContext | None = None) -> Tensor:
        ctx = ctx or _NO_EXTRAS
        prep = _prelude(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        query, out = _text_attention(self.name, attn, prep, ctx)
        if prep.is_cross and ctx.image_tokens is not None and ctx.ip_scale != 0:
            # one fused kernel for out + gamma * image_out (no gamma * image_out temporary)
            out = torch.add(out, self._image_attention(attn, query, prep, ctx), alpha=ctx.ip_scale)
        return _epilogue(attn, out, prep)

    def _image_attention(self, attn, query: Tensor, prep: _Prepared,
                         ctx: AttentionContext) -> Tensor:
        """Attn(Q, K_i, V_i) as (B, heads, Q, d) over the tokens ctx.image_mask keeps;
        records its softmax as "<name>:ip"."""
        tokens = ctx.image_tokens.to(self.to_k_ip.weight.dtype)
        key = _heads(attn, self.to_k_ip(tokens).to(query.dtype))  # (B, heads, M, d)
        value = _heads(attn, self.to_v_ip(tokens).to(query.dtype))
        name = f"{self.name}:ip"
        keep = ctx.store is not None and ctx.store.wants(name)
        out, probs = _attend(query, key, value, ctx.image_mask, attn.scale, keep)
        if keep:
            _record(ctx, name, probs, prep)
        return out


def _decoupled_for(layer, name: str, image_dim: int | None, init_from_text: bool):
    """A DecoupledAttnProcessor sized, placed and (optionally) initialised from `layer`."""
    to_k, to_v = layer.to_k, layer.to_v
    proc = DecoupledAttnProcessor(name, to_k.out_features, to_k.in_features, image_dim)
    proc.to(device=to_k.weight.device, dtype=to_k.weight.dtype)
    if init_from_text and proc.to_k_ip.in_features == to_k.in_features:
        with torch.no_grad():
            proc.to_k_ip.weight.copy_(to_k.weight)
            proc.to_v_ip.weight.copy_(to_v.weight)
    return proc


def install_processors(model, decoupled: bool = False, image_dim: int | None = None,
                       init_from_text: bool = True, prefix: str = "") -> dict[str, object]:
    """Install IdAttnProcessor on every layer (or DecoupledAttnProcessor on cross-attention
    layers when decoupled=True; new to_k_ip/to_v_ip copy the layer's to_k/to_v when the
    dims match and init_from_text), via model.set_attn_processor(full dict built from
    model.attn_processors). Returns the dict. Works for UNet2DConditionModel and ControlNetModel.

    A processor's name is its layer path (the `attn_processors` key without ".processor"),
    preceded by `prefix`; give the ControlNet a prefix (e.g. "controlnet.") when one store
    records layers of both it and the UNet, whose layer paths coincide.
    """
    processors: dict[str, object] = {}
    for key in model.attn_processors:
        path = key.removesuffix(".processor")
        layer = model.get_submodule(path)
        if decoupled and layer.is_cross_attention:
            processors[key] = _decoupled_for(layer, prefix + path, image_dim, init_from_text)
        else:
            processors[key] = IdAttnProcessor(prefix + path)
    model.set_attn_processor(dict(processors))  # it pops entries from the dict it is given
    return processors


def decoupled_modules(model) -> nn.ModuleDict:
    """The trainable IP K/V projections by layer name ("." -> "_", as ModuleDict keys
    forbid dots): save/load them by name, e.g. `decoupled_modules(unet).state_dict()`."""
    return nn.ModuleDict({
        proc.name.replace(".", "_"): proc
        for proc in model.attn_processors.values() if isinstance(proc, DecoupledAttnProcessor)
    })
