"""ldm_ext.attention: masks geometry, processors vs diffusers and vs the paper equations,
attention-map store, on tiny SD1.5/SDXL UNets and a ControlNet built here (fp32, CPU)."""
import functools
import inspect
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention_processor import (Attention, AttnProcessor2_0,
                                                  IPAdapterAttnProcessor2_0)

from ldm_ext.attention import (AttentionContext, AttentionStore, DecoupledAttnProcessor,
                               MaskedTextAttnProcessor, TokenLayout, box_masks, build_face_masks,
                               decoupled_modules, expand_boxes, install_processors)

LAYOUT = TokenLayout(num_text=7, num_slots=3, tokens_per_face=2)
ATOL = 1e-5


# ----------------------------------------------------------------------------- models
def sd15_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def sdxl_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), cross_attention_dim=64, attention_head_dim=(2, 4),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=(1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8).eval()


def controlnet() -> ControlNetModel:
    net = ControlNetModel.from_unet(sd15_unet(), conditioning_embedding_out_channels=(8, 16))
    torch.manual_seed(1)
    for p in [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters(),
              *net.controlnet_cond_embedding.conv_out.parameters()]:
        torch.nn.init.normal_(p, std=0.2)  # zero-initialised outputs would hide any difference
    return net.eval()


MODELS = {"sd15": sd15_unet, "sdxl": sdxl_unet, "controlnet": controlnet}


def run(model, ctx=None, hw=(16, 16), batch=2):
    """One forward with fixed inputs; returns the output tensors flattened and concatenated."""
    g = torch.Generator().manual_seed(2)
    width = model.config.cross_attention_dim
    kwargs = dict(sample=torch.randn(batch, 4, *hw, generator=g), timestep=torch.tensor(10),
                  encoder_hidden_states=torch.randn(batch, LAYOUT.total, width, generator=g),
                  cross_attention_kwargs=None if ctx is None else {"ctx": ctx})
    if model.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 32, generator=g),
                                       "time_ids": torch.randn(batch, 6, generator=g)}
    if isinstance(model, ControlNetModel):
        kwargs["controlnet_cond"] = torch.randn(batch, 3, 2 * hw[0], 2 * hw[1], generator=g)
        down, mid = model(**kwargs, return_dict=False)
        return torch.cat([t.flatten() for t in (*down, mid)])
    return model(**kwargs).sample


def masks(mode="multiply", boxes=None, valid=None, hw=(16, 16), batch=2, margin=0.25):
    """Face masks; default: every slot valid and covering the whole image (an all-ones M)."""
    if boxes is None:
        boxes = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(batch, LAYOUT.num_slots, 4)
    valid = torch.ones(batch, LAYOUT.num_slots, dtype=torch.bool) if valid is None else valid
    return build_face_masks(boxes, valid, LAYOUT, hw, num_levels=2, mode=mode, margin=margin)


def halves_boxes(batch=2):
    """Slot 0 the left half, slot 1 the right half, slot 2 empty (aligned to an 8x8 grid)."""
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    valid = torch.tensor([True, True, False])
    return boxes.expand(batch, 3, 4), valid.expand(batch, 3)


# ----------------------------------------------------------------------------- geometry
def test_token_layout():
    assert LAYOUT.total == 13
    assert LAYOUT.face_slice(0) == slice(7, 9) and LAYOUT.face_slice(2) == slice(11, 13)
    with pytest.raises(IndexError):
        LAYOUT.face_slice(3)


def test_expand_boxes_scales_about_centre_and_clips():
    boxes = torch.tensor([[0.4, 0.2, 0.6, 0.6], [0.0, 0.0, 0.2, 0.4]])
    out = expand_boxes(boxes, margin=0.25)
    torch.testing.assert_close(out[0], torch.tensor([0.375, 0.15, 0.625, 0.65]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 0.225, 0.45]))  # clipped at 0
    torch.testing.assert_close(expand_boxes(torch.tensor([0.1, 0.1, 0.9, 0.9]), 1.0),
                               torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_box_masks_pixel_centres_non_square():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.25], [0.5, 0.25, 1.0, 1.0]]])
    m = box_masks(boxes, height=4, width=8)
    assert m.shape == (1, 2, 4, 8) and set(m.unique().tolist()) == {0.0, 1.0}
    assert m[0, 0, 0, :4].eq(1).all() and m[0, 0].sum() == 4
    assert m[0, 1, 1:, 4:].eq(1).all() and m[0, 1].sum() == 12
    assert (m[0, 0] * m[0, 1]).sum() == 0  # boxes sharing an edge do not overlap


def test_build_face_masks_levels_and_biases():
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.1, 0.1]]])
    valid = torch.tensor([[True, True, False]])
    fm = build_face_masks(boxes, valid, LAYOUT, (16, 12), num_levels=4)
    assert sorted(fm.regions) == [2 * 2, 4 * 3, 8 * 6, 16 * 12]
    grown = expand_boxes(boxes)
    torch.testing.assert_close(fm.region(8 * 6), box_masks(grown, 8, 6).flatten(2))
    assert fm.region(16 * 12)[0, 0].sum() == box_masks(grown, 16, 12)[0, 0].sum() > 0
    bias = fm.bias(16 * 12, torch.float32, torch.device("cpu"))
    assert bias.shape == (1, 1, 192, LAYOUT.total + 3)
    inside = fm.region(192)[0, 0].bool()
    assert bias[0, 0, inside, 7:9].eq(0).all() and bias[0, 0, ~inside, 7:9].eq(-math.inf).all()
    assert bias[0, 0, inside, 13].eq(-math.inf).all()
    assert torch.allclose(bias[0, 0, ~inside, 13], torch.tensor(math.log(2)))
    assert bias[0, 0, :, 11:13].eq(-math.inf).all() and bias[0, 0, :, 15].eq(-math.inf).all()
    hard = build_face_masks(boxes, valid, LAYOUT, (16, 12), mode="hard")
    assert hard.bias(192, torch.float32, torch.device("cpu")).shape == (1, 1, 192, LAYOUT.total)
    with pytest.raises(KeyError, match="no face mask for 100 queries"):
        fm.region(100)
    with pytest.raises(ValueError, match="mode"):
        build_face_masks(boxes, valid, LAYOUT, (16, 12), mode="soft")


def test_small_faces_keep_their_centre_pixel_at_every_level():
    """A valid face covering no pixel centre at a coarse level keeps the pixel under its
    centre there; empty slots stay empty; faces covering pixels keep exactly their box."""
    boxes = torch.tensor([[[0.33, 0.33, 0.41, 0.41], [0.1, 0.5, 0.6, 0.9],
                           [0.33, 0.33, 0.41, 0.41]]])  # + 25 %: 0.32..0.42, between centres
    valid = torch.tensor([[True, True, False]])
    fm = build_face_masks(boxes, valid, LAYOUT, (64, 64), num_levels=4)
    for side in (64, 32, 16, 8):
        region = fm.region(side * side)[0].view(3, side, side)
        assert region[0].sum() >= 1
        torch.testing.assert_close(region[1], box_masks(expand_boxes(boxes), side, side)[0, 1])
    coarse = fm.region(64)[0].view(3, 8, 8)
    assert coarse[0].sum() == 1 and coarse[0, 2, 2] == 1  # 0.37 * 8 = 2.96: row, column 2
    assert not coarse[2].any()  # the same box in an empty slot gets nothing added


def test_four_template_faces_cover_every_level_at_512():
    """Four identities on the default 512 x 512 template: every face has pixels at 8 x 8."""
    from ldm_ext.perception.pose import face_box, pose_template

    boxes = torch.tensor(np.stack([face_box(p, margin=0.0) for p in
                                   pose_template(4, (512, 512))]) / 512)[None]  # (1, 4, 4)
    layout = TokenLayout(num_text=7, num_slots=4, tokens_per_face=2)
    fm = build_face_masks(boxes, torch.ones(1, 4, dtype=torch.bool), layout, (64, 64))
    for side in (64, 32, 16, 8):
        assert (fm.region(side * side)[0].sum(-1) >= 1).all()


def test_context_grid_non_square():
    ctx = AttentionContext(latent_hw=(16, 12))
    assert ctx.grid(192) == (16, 12) and ctx.grid(48) == (8, 6) and ctx.grid(12) == (4, 3)
    assert AttentionContext().grid(64) == (8, 8)
    with pytest.raises(ValueError):
        ctx.grid(50)


# ----------------------------------------------------------------------------- vs diffusers
@functools.cache
def baseline(kind):
    """The model's output with diffusers' AttnProcessor2_0 on every layer."""
    model = MODELS[kind]()
    model.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        return run(model)


VARIANTS = {
    "plain": (False, lambda: None),
    "multiply_all_ones": (False, lambda: AttentionContext(face_masks=masks("multiply"))),
    "hard_all_ones": (False, lambda: AttentionContext(face_masks=masks("hard"))),
    "maps_materialised": (False, lambda: AttentionContext(
        face_masks=masks(), store=AttentionStore(lambda n: True, size=8))),
    "decoupled_no_image": (True, lambda: AttentionContext()),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", MODELS)
def test_processors_match_attn_processor_2_0(kind, variant):
    model, expected = MODELS[kind](), baseline(kind)
    decoupled, make_ctx = VARIANTS[variant]
    install_processors(model, decoupled=decoupled)
    with torch.no_grad():
        got = run(model, make_ctx())
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- layer level
def layer():
    torch.manual_seed(3)
    return Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()


def layer_inputs(hw=(5, 5), batch=2):
    g = torch.Generator().manual_seed(4)
    return (torch.randn(batch, hw[0] * hw[1], 16, generator=g),
            torch.randn(batch, LAYOUT.total, 12, generator=g))


def heads(attn, x):
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # (B, heads, L, d)


def direct(attn, hidden, keys_from, values_from, mask_logits=None):
    """softmax(QKᵀ/√d [masked]) V written out, then the output projection."""
    q, k = heads(attn, attn.to_q(hidden)), heads(attn, attn.to_k(keys_from))
    v = heads(attn, attn.to_v(values_from))
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, heads, Q, K)
    if mask_logits is not None:
        logits = mask_logits(logits)
    probs = logits.softmax(-1)
    return attn.to_out[0]((probs @ v).transpose(1, 2).flatten(2)), probs


def eq6(faces, num_queries):
    """Eq. 6 directly: M over the key axis; multiply -> logits*M, hard -> -inf where M = 0;
    an empty slot's tokens -inf for every pixel in both modes."""
    lay, region = faces.layout, faces.region(num_queries)  # (B, N, Q)
    batch = region.shape[0]
    m = torch.ones(batch, num_queries, lay.total)
    empty = torch.zeros(batch, num_queries, lay.total, dtype=torch.bool)
    for n in range(lay.num_slots):
        m[:, :, lay.face_slice(n)] = region[:, n, :, None]
        empty[:, :, lay.face_slice(n)] = ~faces.valid[:, n, None, None]

    def apply(logits):
        if faces.mode == "multiply":
            logits = logits * m[:, None]
        else:
            logits = logits.masked_fill(m[:, None] == 0, -math.inf)
        return logits.masked_fill(empty[:, None], -math.inf)
    return apply


@pytest.mark.parametrize("with_attention_mask", [False, True])
@pytest.mark.parametrize("mode", ["multiply", "hard"])
def test_masked_processor_equals_eq6(mode, with_attention_mask):
    attn, (hidden, enc) = layer(), layer_inputs()
    extra = None
    if with_attention_mask:  # diffusers' additive (B, 1, K) mask, here dropping text token 3
        extra = torch.zeros(2, 1, LAYOUT.total)
        extra[:, :, 3] = -math.inf
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.6], [0.4, 0.5, 1.0, 1.0], [0.2, 0.2, 0.7, 0.7]],
                          [[0.1, 0.1, 0.9, 0.9], [0.0, 0.0, 0.3, 0.3], [0.6, 0.0, 1.0, 0.4]]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    faces = build_face_masks(boxes, valid, LAYOUT, (5, 5), num_levels=1, mode=mode)
    masked = eq6(faces, 25)
    expected, probs = direct(attn, hidden, enc, enc,
                             masked if extra is None else lambda x: masked(x) + extra[:, None])
    store = AttentionStore(["l"], size=5)
    attn.set_processor(MaskedTextAttnProcessor("l"))
    fast = attn(hidden, enc, extra, ctx=AttentionContext(face_masks=faces))
    slow = attn(hidden, enc, extra, ctx=AttentionContext(face_masks=faces, store=store))
    torch.testing.assert_close(fast, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(slow, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(store.maps["l"], probs.transpose(2, 3).unflatten(-1, (5, 5)),
                               atol=ATOL, rtol=0)
    assert not torch.allclose(fast, direct(attn, hidden, enc, enc)[0], atol=1e-3)
    if extra is not None:
        assert store.maps["l"][:, :, 3].eq(0).all()


def test_multiply_mode_with_biased_to_k_appends_virtual_keys_after_projection():
    torch.manual_seed(3)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8, bias=True).eval()
    hidden, enc = layer_inputs()
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.6], [0.4, 0.5, 1.0, 1.0], [0.2, 0.2, 0.7, 0.7]])
    faces = build_face_masks(boxes.expand(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), LAYOUT,
                             (5, 5), num_levels=1)
    attn.set_processor(MaskedTextAttnProcessor("l"))
    got = attn(hidden, enc, ctx=AttentionContext(face_masks=faces))
    torch.testing.assert_close(got, direct(attn, hidden, enc, enc, eq6(faces, 25))[0],
                               atol=ATOL, rtol=0)


def test_multiply_mode_reuses_virtual_inputs_only_without_graph():
    """The per-batch virtual inputs are reused across layers (with or without autocast),
    rebuilt when the encoder states change in place, and never reused where autograd needs
    their graph (a forward under no_grad, then the same ctx with grad, as reentrant
    checkpointing does)."""
    attn, (hidden, enc) = layer(), layer_inputs()
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.6], [0.4, 0.5, 1.0, 1.0], [0.2, 0.2, 0.7, 0.7]])
    faces = build_face_masks(boxes.expand(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), LAYOUT,
                             (5, 5), num_levels=1)
    attn.set_processor(MaskedTextAttnProcessor("l"))
    ctx = AttentionContext(face_masks=faces)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # built under autocast, then fp32
            attn(hidden, enc, ctx=ctx)
        first = attn(hidden, enc, ctx=ctx)
        torch.testing.assert_close(attn(hidden, enc, ctx=ctx), first, atol=0, rtol=0)
        enc.mul_(2.0)
        torch.testing.assert_close(attn(hidden, enc, ctx=ctx),
                                   attn(hidden, enc, ctx=AttentionContext(face_masks=faces)))
    enc.requires_grad_()
    with torch.no_grad():
        attn(hidden, enc, ctx=ctx)
    attn(hidden, enc, ctx=ctx).square().sum().backward()
    cached_grad, enc.grad = enc.grad, None
    attn(hidden, enc, ctx=AttentionContext(face_masks=faces)).square().sum().backward()
    assert cached_grad is not None and cached_grad.abs().sum() > 0
    torch.testing.assert_close(cached_grad, enc.grad)


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_cross_attention_keys_values_reused_per_context_only_without_autograd():
    """A context's keys and values are projected once per layer while autograd is off
    (every step of a sampling run) and equal fresh ones; they are made again when the
    encoder states or the weights change in place, under autocast, with a new context,
    and every call with autograd on; self-attention never reuses."""
    attn, (hidden, enc) = layer(), layer_inputs()
    attn.set_processor(MaskedTextAttnProcessor("l"))
    to_k = _count_calls(attn.to_k)
    ctx = AttentionContext(face_masks=masks("hard", hw=(5, 5)))
    fresh = lambda: attn(hidden, enc, ctx=AttentionContext(face_masks=ctx.face_masks))
    with torch.no_grad():
        first = attn(hidden, enc, ctx=ctx)
        torch.testing.assert_close(attn(hidden, enc, ctx=ctx), first, atol=0, rtol=0)
        assert to_k[0] == 1
        torch.testing.assert_close(first, fresh(), atol=0, rtol=0)
        enc.mul_(2.0)
        torch.testing.assert_close(attn(hidden, enc, ctx=ctx), fresh(), atol=0, rtol=0)
        attn.to_v.weight.mul_(0.5)
        torch.testing.assert_close(attn(hidden, enc, ctx=ctx), fresh(), atol=0, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert attn(hidden, enc, ctx=ctx).dtype == torch.bfloat16
        own = Attention(query_dim=16, heads=2, dim_head=8, processor=MaskedTextAttnProcessor("s"))
        own_k = _count_calls(own.to_k)
        own(hidden, ctx=ctx)  # self-attention: keys from the hidden states themselves
        own(hidden, ctx=ctx)
        assert own_k[0] == 2
    calls = to_k[0]
    attn(hidden, enc, ctx=ctx)
    attn(hidden, enc, ctx=ctx)
    assert to_k[0] == calls + 2


def test_decoupled_image_keys_values_reused_per_context_only_without_autograd():
    """The image branch's K_i, V_i are reused like the text keys: once per context while
    autograd is off, again when the image tokens change, every call with autograd on."""
    attn, (hidden, enc) = layer(), layer_inputs()
    proc = DecoupledAttnProcessor("l", hidden_size=16, cross_attention_dim=12)
    attn.set_processor(proc)
    to_k_ip = _count_calls(proc.to_k_ip)
    image = torch.randn(2, 4, 12)
    ctx = AttentionContext(image_tokens=image)
    with torch.no_grad():
        first = attn(hidden, enc, ctx=ctx)
        torch.testing.assert_close(attn(hidden, enc, ctx=ctx), first, atol=0, rtol=0)
        assert to_k_ip[0] == 1
        image.add_(1.0)
        torch.testing.assert_close(attn(hidden, enc, ctx=ctx),
                                   attn(hidden, enc, ctx=AttentionContext(image_tokens=image)),
                                   atol=0, rtol=0)
        assert to_k_ip[0] == 3
    attn(hidden, enc, ctx=ctx).sum().backward()
    assert to_k_ip[0] == 4 and proc.to_k_ip.weight.grad is not None


def test_split_kv():
    attn, (hidden, enc) = layer(), layer_inputs()
    values = torch.randn_like(enc)
    attn.set_processor(MaskedTextAttnProcessor("l"))
    plain = attn(hidden, enc)
    torch.testing.assert_close(attn(hidden, enc, ctx=AttentionContext(value_states=enc)), plain,
                               atol=ATOL, rtol=0)
    split = attn(hidden, enc, ctx=AttentionContext(value_states=values))
    torch.testing.assert_close(split, direct(attn, hidden, enc, values)[0], atol=ATOL, rtol=0)
    assert not torch.allclose(split, plain, atol=1e-3)


def test_decoupled_matches_ip_adapter_and_gamma():
    attn, (hidden, enc) = layer(), layer_inputs()
    image = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(5))
    ours = DecoupledAttnProcessor("l", hidden_size=16, cross_attention_dim=12, image_dim=10)
    ref = IPAdapterAttnProcessor2_0(hidden_size=16, cross_attention_dim=10, num_tokens=(4,),
                                    scale=0.7)
    ref.to_k_ip[0].load_state_dict(ours.to_k_ip.state_dict())
    ref.to_v_ip[0].load_state_dict(ours.to_v_ip.state_dict())
    attn.set_processor(ref)
    expected = attn(hidden, encoder_hidden_states=(enc, [image]))
    attn.set_processor(MaskedTextAttnProcessor("l"))
    plain = attn(hidden, enc)
    attn.set_processor(ours)
    got = attn(hidden, enc, ctx=AttentionContext(image_tokens=image, ip_scale=0.7))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    gamma0 = attn(hidden, enc, ctx=AttentionContext(image_tokens=image, ip_scale=0.0))
    torch.testing.assert_close(gamma0, plain, atol=ATOL, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-3)


# ----------------------------------------------------------------------------- maps
def cross_maps(kind, mode):
    """Cross-attention maps (8x8) with the halves boxes of `halves_boxes`, margin 0."""
    model = MODELS[kind]()
    install_processors(model)
    store = AttentionStore(lambda n: n.endswith("attn2"), size=8)
    boxes, valid = halves_boxes()
    with torch.no_grad():
        run(model, AttentionContext(face_masks=masks(mode, boxes, valid, margin=0.0), store=store))
    return store


@pytest.mark.parametrize("kind", ["sd15", "controlnet"])
def test_hard_mode_never_attends_to_other_face_and_empty_slot(kind):
    store = cross_maps(kind, "hard")
    assert store.maps
    for maps in store.maps.values():  # (B, heads, K, 8, 8); x < 4 is face 0's half
        assert maps[:, :, LAYOUT.face_slice(1), :, :4].eq(0).all()
        assert maps[:, :, LAYOUT.face_slice(0), :, 4:].eq(0).all()
        assert maps[:, :, LAYOUT.face_slice(2)].eq(0).all()
        assert maps[:, :, LAYOUT.face_slice(0), :, :4].gt(0).all()


def test_multiply_mode_outside_face_gets_logit_zero_but_empty_slot_none():
    store = cross_maps("sd15", "multiply")
    for maps in store.maps.values():
        assert maps[:, :, LAYOUT.face_slice(1), :, :4].gt(0).all()  # logit 0, not -inf
        assert maps[:, :, LAYOUT.face_slice(2)].eq(0).all()
        torch.testing.assert_close(maps.sum(2), torch.ones_like(maps.sum(2)))


def test_masks_change_controlnet_output():
    net = controlnet()
    install_processors(net)
    boxes, valid = halves_boxes()
    with torch.no_grad():
        plain = run(net, AttentionContext())
        masked = run(net, AttentionContext(face_masks=masks("hard", boxes, valid)))
    assert not torch.allclose(plain, masked, atol=1e-4)


def test_store_records_chosen_layers_with_grads():
    model = sd15_unet()
    procs = install_processors(model)
    names = [p.name for p in procs.values() if p.name.endswith("attn2")]
    chosen = names[:1] + names[-1:]
    store = AttentionStore(chosen, size=4)
    run(model, AttentionContext(face_masks=masks(), store=store))
    assert list(store.maps) == chosen
    assert store.stacked().shape == (2, 2, 8, LAYOUT.total, 4, 4)
    store.stacked().pow(2).sum().backward()
    to_k = model.get_submodule(chosen[0]).to_k.weight
    assert to_k.grad is not None and to_k.grad.abs().sum() > 0
    store.clear()
    assert store.maps == {}


def test_store_accumulates_detached_head_means_over_records():
    """accumulate=True (plots of a sampling run): records add up, averaged() is the mean
    over records and then layers, with no graph kept."""
    store = AttentionStore(["a", "b"], size=2, accumulate=True)
    first = torch.rand(1, 3, 4, 5, requires_grad=True)  # (B, heads, Q=2x2, K)
    second, other = torch.rand(1, 3, 4, 5), torch.rand(1, 3, 4, 5)
    store.record("a", first, (2, 2))
    store.record("a", second, (2, 2))
    store.record("b", other, (2, 2))
    as_maps = lambda p: p.detach().mean(1).transpose(1, 2).unflatten(-1, (2, 2))  # (B, K, 2, 2)
    expected = ((as_maps(first) + as_maps(second)) / 2 + as_maps(other)) / 2
    torch.testing.assert_close(store.averaged(), expected)
    assert store.counts == {"a": 2, "b": 1} and not store.maps["a"].requires_grad
    store.clear()
    with pytest.raises(ValueError, match="no attention maps"):
        store.averaged()


def test_store_in_controlnet_with_prefix_and_non_square_latents():
    net, hw = controlnet(), (16, 12)
    procs = install_processors(net, prefix="controlnet.")
    store = AttentionStore(lambda n: n.endswith("attn2"), size=6)
    faces = masks("hard", *halves_boxes(batch=1), hw=hw, batch=1)
    with torch.no_grad():
        run(net, AttentionContext(face_masks=faces, store=store, latent_hw=hw), hw=hw, batch=1)
    expected = sorted(p.name for p in procs.values() if p.name.endswith("attn2"))
    assert sorted(store.maps) == expected and all(n.startswith("controlnet.") for n in expected)
    assert {tuple(m.shape) for m in store.maps.values()} == {(1, 8, LAYOUT.total, 6, 6)}


# ----------------------------------------------------------------------------- install
def test_install_decoupled_layers_and_modules():
    model = sdxl_unet()
    procs = install_processors(model, decoupled=True)
    assert procs.keys() == model.attn_processors.keys()
    for proc in model.attn_processors.values():  # diffusers passes only kwargs __call__ names
        assert "ctx" in inspect.signature(proc.__call__).parameters
    cross = {k: p for k, p in procs.items() if isinstance(p, DecoupledAttnProcessor)}
    assert cross and all(k.endswith("attn2.processor") for k in cross)
    assert all(isinstance(p, MaskedTextAttnProcessor) for k, p in procs.items() if k not in cross)
    key, proc = next(iter(cross.items()))
    to_k = model.get_submodule(key.removesuffix(".processor")).to_k
    torch.testing.assert_close(proc.to_k_ip.weight, to_k.weight)
    modules = decoupled_modules(model)
    assert len(modules) == len(cross)
    model_params = {id(p) for p in model.parameters()}
    assert all(id(p) in model_params for p in modules.parameters())  # saved/moved with the UNet
    install_processors(model, decoupled=True, image_dim=24)
    assert all(m.to_k_ip.in_features == 24 for m in decoupled_modules(model).values())


def test_decoupled_unet_image_branch_and_ip_maps():
    model = sd15_unet()
    install_processors(model, decoupled=True, image_dim=24)
    image = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(6))
    store = AttentionStore(lambda n: n.endswith(":ip"), size=8)
    with torch.no_grad():
        plain = run(model, AttentionContext(image_tokens=image, ip_scale=0.0))
        with_ip = run(model, AttentionContext(image_tokens=image, ip_scale=1.0, store=store))
    torch.testing.assert_close(plain, run(model).detach(), atol=ATOL, rtol=0)
    assert not torch.allclose(plain, with_ip, atol=1e-4)
    assert store.maps and {tuple(m.shape) for m in store.maps.values()} == {(2, 8, 5, 8, 8)}
    for maps in store.maps.values():
        torch.testing.assert_close(maps.sum(2), torch.ones_like(maps.sum(2)))
