"""StoryMaker's losses per equation (Eq. 9-12, the person-weighted noise loss, the drops) and
its training module on the tiny backbone: what trains, batches mixing one, two and three
characters, masking of absent characters, the loss layers, the recipes."""
from __future__ import annotations

import pytest
import torch

from ldm_ext.attention import AttentionContext, AttentionStore, DecoupledAttnProcessor
from ldm_ext.config import load_config
from ldm_ext.methods.loading import build_method
from ldm_ext.methods.storymaker import layer_level
from ldm_ext.methods.storymaker_losses import (attention_loss, draw_drops, group_maps,
                                               person_weights, region_targets,
                                               weighted_noise_loss)

DEMO = "configs/experiment/storymaker_demo.yaml"
NO_DROPS = ["method.empty_prompt_prob=0", "method.drop_characters=0", "method.drop_both=0",
            "method.drop_face_tokens=0", "method.drop_character_tokens=0"]
pytestmark = pytest.mark.usefixtures("one_thread")


def probs_of(groups: list[float], size: int = 2, tokens: int = 2) -> torch.Tensor:
    """(1, 2 heads, G·tokens, s, s) maps whose group g sums to ``groups[g]`` everywhere."""
    values = torch.tensor(groups).repeat_interleave(tokens) / tokens
    return values[None, None, :, None, None].expand(1, 2, -1, size, size).clone()


def test_group_maps_sum_each_groups_tokens_averaged_over_heads():
    """Eq. 10: A_k = Σ_{tokens of k} P; heads averaged first (the released trainer)."""
    probs = torch.arange(2 * 4 * 1 * 1, dtype=torch.float).view(1, 2, 4, 1, 1)
    # head 0 tokens 0..3, head 1 tokens 4..7 -> head mean 2, 3, 4, 5 -> groups 5, 9
    assert group_maps(probs, 2).flatten().tolist() == [5.0, 9.0]


def test_attention_loss_paper_and_official_by_hand():
    """Character 1 covers the left half, character 2 is absent; A_bg = A_1 = a everywhere.
    Per group MSE against [1 0] / [0 1] halves: (a² + (1 - a)²) / 2."""
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :, :2] = 1
    masks[0, 1] = 1  # an absent character's mask must not count
    valid = torch.tensor([[True, False]])
    layers = [probs_of([0.3, 0.3, 0.0]), probs_of([0.7, 0.7, 0.0])]
    mse = (0.3**2 + 0.7**2) / 2  # the same for a = 0.3 and 0.7
    paper = attention_loss(layers, masks, valid, tokens_per_group=2, form="paper")
    assert paper.item() == pytest.approx(mse)  # 1/(N+1) Σ_k over bg + 1 character, per layer
    official = attention_loss(layers, masks, valid, tokens_per_group=2, form="official")
    assert official.item() == pytest.approx((0.25 + 0.25) / 1)  # layer mean a = 0.5, / N = 1
    perfect = [probs_of([0.0, 1.0, 0.0])]
    perfect[0][..., 0:2, :, 1] = 0.5  # background tokens on the right half
    perfect[0][..., 2:4, :, 1] = 0.0
    assert attention_loss(perfect, masks, valid, 2, "paper").item() == pytest.approx(0.0)


def test_background_of_overlapping_characters_paper_and_official():
    """Character 1 the top half, character 2 the left half of a 4x4 image, on a 1x1 grid:
    the union covers 0.75, so the paper's background (1 - union) is 0.25; the official
    trainer's 1 - min(1, Σ resized M_k) gives 0."""
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :2] = 1
    masks[0, 1, :, :2] = 1
    valid = torch.tensor([[True, True]])
    paper, weights = region_targets(masks, valid, (1, 1), "paper")
    official, _ = region_targets(masks, valid, (1, 1), "official")
    assert paper.flatten().tolist() == pytest.approx([0.25, 0.5, 0.5])
    assert official.flatten().tolist() == pytest.approx([0.0, 0.5, 0.5])
    assert weights.tolist() == [[1.0, 1.0, 1.0]]


def test_person_weighted_noise_loss():
    """(1 + 5 · union of the present characters) where the characters were kept."""
    masks = torch.zeros(2, 2, 8, 8)
    masks[:, 0, :4] = 1
    masks[:, 1, 4:, :4] = 1
    valid = torch.tensor([[True, False], [True, True]])
    weights = person_weights(masks, valid, torch.tensor([True, False]), (2, 2), 5.0)
    assert weights[0, 0].tolist() == [[6.0, 6.0], [1.0, 1.0]]
    assert weights[1, 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    pred, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    assert weighted_noise_loss(pred, target, weights).item() == pytest.approx((6 * 2 + 6) / 8)
    assert weighted_noise_loss(pred, target, None).item() == 1.0


def test_drops_are_one_joint_draw():
    drop, text = draw_drops(40000, 0.05, 0.2, 0.05, torch.Generator().manual_seed(0))
    assert drop.float().mean().item() == pytest.approx(0.10, abs=0.01)
    assert text.float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert (drop & text).float().mean().item() == pytest.approx(0.05, abs=0.005)
    with pytest.raises(ValueError):
        draw_drops(2, 0.5, 0.5, 0.5, torch.Generator())


def test_image_mask_equals_leaving_the_absent_character_out():
    """A masked token group changes nothing: the output equals attention over the present
    groups alone, and the recorded map gives the masked tokens probability 0."""
    from diffusers.models.attention_processor import Attention

    attn = Attention(16, cross_attention_dim=8, heads=2, dim_head=8)
    attn.set_processor(DecoupledAttnProcessor("l", 16, 8))
    hidden, text, image = torch.randn(2, 4, 16), torch.randn(2, 5, 8), torch.randn(2, 6, 8)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])[:, None, None]
    store = AttentionStore(["l:ip"], size=2)
    with torch.no_grad():
        masked = attn(hidden, text, ctx=AttentionContext(image_tokens=image, image_mask=mask,
                                                         store=store))
        alone = attn(hidden[:1], text[:1], ctx=AttentionContext(image_tokens=image[:1, :4]))
    torch.testing.assert_close(masked[:1], alone)
    assert store.maps["l:ip"][0, :, 4:].abs().max() == 0


@pytest.fixture(scope="module")
def method():
    return build_method(load_config(DEMO, NO_DROPS)).train()


def mixed_batch(size: int = 64) -> dict:
    """Three images with one, two and three characters (slots beyond are empty)."""
    gen = torch.Generator().manual_seed(0)
    valid = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    masks = torch.zeros(3, 3, size, size)
    for k in range(3):
        masks[:, k, size // 4:, k * size // 3:(k + 1) * size // 3] = 1
    return {"pixel_values": torch.rand(3, 3, size, size, generator=gen) * 2 - 1,
            "caption": ["a person", "two people", "three people"],
            "face_crops": torch.rand(3, 3, 3, 160, 160, generator=gen) * 2 - 1,
            "characters": torch.rand(3, 3, 3, 224, 224, generator=gen),
            "character_masks": masks * valid[:, :, None, None], "face_valid": valid}


def test_what_trains_and_the_rest_is_frozen(method):
    assert {n.split(".")[0] for n in method.trainable_parameters()} == {"ppr", "ip_kv", "lora"}
    trainable = {id(p) for p in method.trainable_parameters().values()}
    assert all(p.requires_grad == (id(p) in trainable) for p in method.parameters())
    assert not method.face_encoder.training and not method.image_encoder.training
    levels = {layer_level(n, method.backbone.num_levels) for n in method.loss_layers}
    assert levels == {1, 2}  # the demo's attn_loss_layers: all


def test_mixed_one_two_three_character_batch_trains(method):
    method.zero_grad(set_to_none=True)
    losses = method.model_step(mixed_batch(), torch.Generator().manual_seed(1))
    assert set(losses) == {"loss", "noise", "attn"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = {n: p.grad for n, p in method.trainable_parameters().items()}
    assert grads["ppr.fuse.weight"].abs().sum() > 0
    assert grads["ppr.position"][:3].abs().sum(dim=(1, 2)).gt(0).all()
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items()
               if n.startswith("ip_kv.") and n.endswith("to_k_ip.weight"))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items()
               if n.startswith("lora.") and ".lora_B." in n)


def test_absent_characters_change_nothing(method):
    """What sits in an empty slot (crops, mask) does not reach the losses."""
    batch, other = mixed_batch(), mixed_batch()
    empty = ~batch["face_valid"]
    other["face_crops"][empty] = 1.0
    other["characters"][empty] = 0.5
    other["character_masks"][empty] = 1.0
    with torch.no_grad():
        first = method.model_step(batch, torch.Generator().manual_seed(2))
        second = method.model_step(other, torch.Generator().manual_seed(2))
    for key in first:
        torch.testing.assert_close(first[key], second[key])


def test_lowest_resolution_loss_layers_and_recipes():
    cfg = load_config(DEMO, ["method.attn_loss_layers=lowest", *NO_DROPS])
    lowest = build_method(cfg)
    assert {layer_level(n, 3) for n in lowest.loss_layers} == {2}
    assert lowest.loss_store().size is None  # every loss layer on its own grid
    paper = load_config("configs/experiment/storymaker_sdxl_paper.yaml").method
    assert (paper.lr, paper.lr_milestones, paper.lr_gamma) == (1e-4, [4000], 0.5)
    assert (paper.empty_prompt_prob, paper.drop_characters, paper.attn_loss_form) == \
        (0.1, 0.05, "paper")
    official = load_config("configs/experiment/storymaker_sdxl_official.yaml")
    assert (official.method.empty_prompt_prob, official.method.drop_both) == (0.2, 0.05)
    assert official.method.lora_targets == ["to_q", "to_k", "to_v", "to_out.0"]
    assert official.model.controlnet and official.method.noise_offset == 0.05


def test_frozen_pose_controlnet_conditions_the_step():
    """With model.controlnet (frozen; here a copy of the UNet) the batch's pose image adds
    its residuals; nothing of the ControlNet trains."""
    method = build_method(load_config(DEMO, ["model.controlnet=from_unet", *NO_DROPS]))
    assert not any(p.requires_grad for p in method.controlnet.parameters())
    with torch.no_grad():
        for p in method.controlnet.controlnet_down_blocks.parameters():
            p.normal_(std=0.1)  # from_unet zero-initialises them: make the residuals count
    batch = mixed_batch()
    with torch.no_grad():
        posed = method.model_step({**batch, "control": torch.rand(3, 3, 64, 64)},
                                  torch.Generator().manual_seed(3))
        plain = method.model_step(batch, torch.Generator().manual_seed(3))
    assert posed["noise"] != plain["noise"]


def test_paper_attention_loss_compares_each_layer_on_its_own_grid(method):
    """Eq. 11 per layer at the layer's h x w: a 4 x 4 layer whose background tokens take a
    checkerboard (half its pixels wrong against the left / right halves) costs 0.5, a 2 x 2
    layer at 0.5 everywhere 0.25: (0.5 + 0.25) / 2. Resizing the 4 x 4 maps to the coarser
    grid first averaged the checkerboard away (0.25). The loss store keeps native grids."""
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, :, :4] = 1  # the character: the left half
    valid = torch.tensor([[True]])
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None]) % 2  # (4, 4) 0/1
    fine = torch.stack([checker, checker, 1 - checker, 1 - checker]).float() / 2  # (4, 4, 4)
    coarse = torch.full((4, 2, 2), 0.25)
    layers = [fine[None, None], coarse[None, None]]  # (1, 1 head, 2 groups x 2 tokens, h, w)
    loss = attention_loss(layers, masks, valid, tokens_per_group=2, form="paper")
    assert loss.item() == pytest.approx((0.5 + 0.25) / 2)
    official = attention_loss(layers, masks, valid, tokens_per_group=2, form="official")
    assert official.item() == pytest.approx((0.25 + 0.25) / 1)  # maps averaged on 2 x 2
    store = method.loss_store()
    store.record("x:ip", torch.rand(1, 2, 16, 3), (4, 4))
    assert store.maps["x:ip"].shape == (1, 2, 3, 4, 4)
