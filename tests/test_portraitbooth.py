"""PortraitBooth's equations with hand-computed values: token positions through the real
tokenizer, STEA (Eq. 4), one-step x̂0 (Eq. 5), identity loss and face crop (Eq. 6),
localisation loss (Eq. 7), the training-sample shares, the face-restricted noise loss and
the region composition of multi-subject generation. No backbone is loaded here."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from ldm_ext.adapters.stea import STEA, augment_tokens
from ldm_ext.cli import InputError
from ldm_ext.losses import noise_loss
from ldm_ext.attention import AttentionStore
from ldm_ext.methods.portraitbooth import PortraitBooth, ecac_entries
from ldm_ext.methods.portraitbooth_losses import (crop_faces, identity_loss, latent_window,
                                                  localization_terms, predicted_x0)
from ldm_ext.pipelines.regions import (blend_weights, boxes_from_people, compose, load_layout,
                                       region_masks)
from ldm_ext.perception.pose import pose_template
from ldm_ext.tokenizer import build_clip_tokenizer
from ldm_ext.word_tokens import word_positions

WORDS = ["man", "woman", "person"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"))


# ----- token positions -------------------------------------------------------------------
def test_word_positions_through_the_real_tokenizer(tokenizer):
    prompts = ["a photo of a man and a woman", "a fearful Woman, smiling", "a policewoman",
               "a photo of a dog", "a " * 80 + "man"]
    found = word_positions(tokenizer, prompts, WORDS + ["fearful", "smiling"])
    assert found[0] == [[5], [8]]  # two subjects, in prompt order (BOS is position 0)
    assert found[1] == [[2, 3], [4], [6]]  # "fearful" is two BPE pieces; case, comma
    assert found[2] == [] and found[3] == []  # no whole word / absent
    assert found[4] == []  # cut off by the 77-token limit
    ids = tokenizer(prompts[1]).input_ids
    assert tokenizer.convert_ids_to_tokens(ids[2:4]) == ["fear", "ful</w>"]


# ----- STEA (Eq. 4) ----------------------------------------------------------------------
def test_stea_hand_computed_and_identity_at_init():
    stea = STEA(text_dim=2, face_dim=2, hidden_dim=1)
    psi, phi = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 4.0]])
    torch.testing.assert_close(stea(psi, phi), psi)  # zero-initialised output layer
    with torch.no_grad():
        stea.fc1.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 1.0]]))
        stea.fc1.bias.zero_()
        stea.fc2.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        stea.fc2.bias.copy_(torch.tensor([0.5, 0.0]))
    # LN(ψ) = [-1, 1], LN(φ) = [-1, 1]; fc1 -> 2; GELU(2) = 2 Φ(2) = 1.95450
    gelu = 2 * 0.5 * (1 + math.erf(2 / math.sqrt(2)))
    expected = torch.tensor([[1.0 + gelu + 0.5, 3.0 - gelu]])
    torch.testing.assert_close(stea(psi, phi), expected, atol=1e-4, rtol=0)


def test_augment_tokens_touches_only_valid_identity_tokens():
    stea = STEA(4, 3)
    torch.nn.init.normal_(stea.fc2.weight)
    text, faces = torch.randn(2, 6, 4), torch.randn(2, 2, 3)
    occurrences = [[[1], [3, 4]], [[2]]]  # prompt 0: two subjects (one split word)
    valid = torch.tensor([[True, False], [True, True]])
    out = augment_tokens(text, stea, faces, occurrences, valid)
    changed = (out != text).any(-1)
    assert changed.tolist() == [[False, True, False, False, False, False],
                                [False, False, True, False, False, False]]
    torch.testing.assert_close(out[1, 2], stea(text[1, 2:3], faces[1, 0:1])[0])
    empty = augment_tokens(text, stea, faces, occurrences, torch.zeros(2, 2, dtype=torch.bool))
    assert empty is text


# ----- DIP (Eq. 5-6) ---------------------------------------------------------------------
@pytest.mark.parametrize("kind, expected", [("epsilon", 0.875), ("v_prediction", 0.5)])
def test_one_step_x0_hand_computed(kind, expected):
    """ᾱ = 0.64, z_t = 1, model output 0.5: ε: (1 − 0.6·0.5)/0.8; v: 0.8·1 − 0.6·0.5."""
    sched = SimpleNamespace(alphas_cumprod=torch.tensor([0.9, 0.64]),
                            config=SimpleNamespace(prediction_type=kind))
    z0 = predicted_x0(sched, torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.5),
                      torch.tensor([1]))
    torch.testing.assert_close(z0, torch.full((1, 1, 1, 1), expected))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_one_step_x0_inverts_the_forward_process(kind):
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=kind)
    z0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 250, 999])
    noisy = sched.add_noise(z0, noise, t)
    target = noise if kind == "epsilon" else sched.get_velocity(z0, noise, t)
    torch.testing.assert_close(predicted_x0(sched, noisy, target, t), z0, atol=2e-3, rtol=1e-3)


def test_identity_loss_hand_computed():
    loss = identity_loss(torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
                         torch.tensor([[1.0, 1.0], [0.0, 5.0]]))
    torch.testing.assert_close(loss, torch.tensor([1 - 1 / math.sqrt(2), 0.0]))


def test_face_crop_takes_the_box_and_keeps_gradients():
    image = torch.arange(8.0).expand(1, 3, 8, 8).clone().requires_grad_(True)  # value = column
    crop = crop_faces(image, torch.tensor([[2.0, 0.0, 6.0, 8.0]]), size=4)
    torch.testing.assert_close(crop[0, 0, 0], torch.tensor([2.0, 3.0, 4.0, 5.0]))
    crop.sum().backward()
    assert image.grad[..., 2:6].sum() > 0 and image.grad[..., 7].sum() == 0


def test_latent_window_covers_box_and_margin():
    box = torch.tensor([0.25, 0.3, 0.5, 0.55])
    assert latent_window(box, (16, 16), 2) == (2, 11, 2, 10)  # rows 4.8..8.8, cols 4..8
    assert latent_window(torch.tensor([0.0, 0.0, 1.0, 1.0]), (8, 8), 4) == (0, 8, 0, 8)


# ----- ECAC (Eq. 7) ----------------------------------------------------------------------
def test_localization_terms_hand_computed():
    """A = [[.6, .2], [.1, 0]], M = [[1, 0], [0, 0]], β = .8:
    mean(A(1−M)) = .3/4, mean(relu(β − A)M) = .2/4 -> .125; a second layer A = 0 adds
    mean(relu(.8)M) = .2 -> layer mean (.125 + .2)/2."""
    a = torch.tensor([[0.6, 0.2], [0.1, 0.0]])
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    one = localization_terms(a[None, None], mask, torch.tensor([0.8]))
    torch.testing.assert_close(one, torch.tensor([0.125]))
    two = localization_terms(torch.stack([a, torch.zeros(2, 2)])[:, None], mask,
                             torch.tensor([0.8]))
    torch.testing.assert_close(two, torch.tensor([(0.125 + 0.2) / 2]))


def _stub(tokenizer, **method):
    cfg = SimpleNamespace(identity_words=WORDS, emotion_words=["happy", "fearful"],
                          loc_identity_weight=0.001, loc_expression_weight=0.01,
                          identity_cap=0.8, expression_cap=0.1, face_loss_prob=0.5,
                          empty_prompt_prob=0.1, text_only_prob=0.1,
                          **{"ecac_empty_mask": "skip", **method})
    return SimpleNamespace(cfg=SimpleNamespace(method=cfg), device=torch.device("cpu"),
                           backbone=SimpleNamespace(tokenizers=[tokenizer]))


def test_ecac_loss_wires_tokens_masks_and_weights(tokenizer):
    """Sample 0 "a fearful man" (man at 4, fearful at 2-3), sample 1 "a dog" (no tokens).
    Maps: 1 everywhere for "man", 0 for the rest; face mask: left half of a 2x2 map.
    man: mean(1·(1−M)) = .5, mean(relu(.8 − 1)M) = 0 -> λ .5; each fearful piece:
    0 + mean(.1·M) = .05 -> μ .05; batch mean: (.001·.5 + .01·.05) / 2."""
    method = _stub(tokenizer)
    valid = torch.tensor([[True], [True]])
    entries = ecac_entries(method, ["a fearful man", "a dog"], valid)
    assert entries.keys == [2, 3, 4] and entries.rows.tolist() == [0, 0, 0]
    store = AttentionStore(["layer"], size=2, keys=entries.keys)
    probs = torch.zeros(2, 3, 4, 77)  # (B, heads, Q = 2x2, K)
    probs[0, :, :, 4] = 1.0
    store.record("layer", probs, (2, 2))
    assert store.maps["layer"].shape == (2, 3, 3, 2, 2)  # only the three tokens kept
    masks = torch.zeros(2, 1, 4, 4)
    masks[:, :, :, :2] = 1.0
    batch = {"face_masks": masks, "face_valid": valid}
    loss, empty = PortraitBooth.ecac_loss(method, store, entries, batch)
    torch.testing.assert_close(loss, torch.tensor((0.001 * 0.5 + 0.01 * 0.05) / 2))
    assert empty.item() == 0
    assert ecac_entries(method, ["a dog", ""], valid) is None


@pytest.mark.parametrize("policy", ["skip", "paper"])
def test_ecac_empty_face_mask_policy(tokenizer, policy):
    """A valid face whose mask is empty (the parser labelled no face pixel, or the crop cut
    them away). Maps 0.25 everywhere for "happy" (2) and "woman" (3); sample 0's mask the
    left half: woman .125 + .55·.5 = .4 -> λ .4, happy .125 + 0 -> μ .125. Sample 1 (empty
    mask): ``skip`` adds nothing (Eq. 7's outside term alone would push its tokens'
    attention to 0 everywhere); ``paper`` applies Eq. 7 as written: λ·.25 + μ·.25. Either
    way the sample is counted."""
    method = _stub(tokenizer, ecac_empty_mask=policy)
    valid = torch.tensor([[True], [True]])
    entries = ecac_entries(method, ["a happy woman"] * 2, valid)
    assert entries.keys == [2, 3]
    store = AttentionStore(["layer"], size=2, keys=entries.keys)
    probs = torch.zeros(2, 1, 4, 77)  # (B, heads, Q = 2x2, K)
    probs[..., 2:4] = 0.25
    store.record("layer", probs, (2, 2))
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, :, :, :2] = 1.0
    loss, empty = PortraitBooth.ecac_loss(method, store, entries,
                                          {"face_masks": masks, "face_valid": valid})
    sample_1 = 0.001 * 0.25 + 0.01 * 0.25 if policy == "paper" else 0.0
    torch.testing.assert_close(loss, torch.tensor((0.001 * 0.4 + 0.01 * 0.125 + sample_1) / 2))
    assert empty.item() == 1


# ----- training samples ------------------------------------------------------------------
def test_condition_mode_shares(tokenizer):
    captions, full = PortraitBooth.condition_modes(_stub(tokenizer), ["x"] * 4000,
                                                   torch.Generator().manual_seed(0))
    empty = sum(c == "" for c in captions) / 4000
    text_only = 1 - empty - full.float().mean().item()
    assert abs(empty - 0.1) < 0.02 and abs(text_only - 0.1) < 0.02


def test_face_restricted_noise_loss_weighs_every_sample_alike(tokenizer):
    """Restricted samples average the error over their face mask only; each sample then
    weighs 1/B, whatever its mask's size."""
    method = _stub(tokenizer)
    method.cfg.method.face_loss_prob = 1.0
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, :4, :4] = 1.0  # top-left quarter; sample 1 has an empty mask: whole image
    batch = {"caption": ["a", "b"], "face_masks": masks, "face_valid": torch.ones(2, 1).bool()}
    weights = PortraitBooth.noise_weights(method, batch, (4, 4), torch.Generator())
    pred, target = torch.zeros(2, 4, 4, 4), torch.ones(2, 4, 4, 4)
    target[0, :, :2, :2] = 3.0  # error 9 inside sample 0's face, 1 elsewhere
    torch.testing.assert_close(noise_loss(pred, target, weights), torch.tensor((9.0 + 1.0) / 2))
    method.cfg.method.face_loss_prob = 0.0
    assert PortraitBooth.noise_weights(method, batch, (4, 4), torch.Generator()) is None


# ----- multi-subject composition ---------------------------------------------------------
def test_region_weights_and_composition():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.25, 0.0, 0.75, 0.5]])
    masks = region_masks(boxes, (2, 4))  # columns 0-1 | columns 1-2, top row
    assert masks.tolist() == [[[1, 1, 0, 0], [1, 1, 0, 0]], [[0, 1, 1, 0], [0, 0, 0, 0]]]
    weights = blend_weights(masks)  # (3, 1, 2, 4): shared prompt, subject 0, subject 1
    assert weights[:, 0, 0].tolist() == [[0, 0, 0, 1], [1, 0.5, 0, 0], [0, 0.5, 1, 0]]
    preds = torch.tensor([0.0, 10.0, 20.0]).view(3, 1, 1, 1).expand(3, 2, 2, 4)
    assert compose(preds, weights)[0, 0].tolist() == [[10, 15, 20, 0], [10, 10, 0, 0]]
    tiny = region_masks(torch.tensor([[0.5, 0.5, 0.51, 0.51]]), (4, 4))
    assert tiny.sum() == 1 and tiny[0, 2, 2] == 1  # sub-pixel box: the pixel of its centre


def test_regions_from_pose_template_and_layout_file(tmp_path):
    boxes = boxes_from_people(pose_template(3, (90, 300)), (90, 300), margin=0.0)
    assert boxes.shape == (3, 4) and (boxes[:, 0] < boxes[:, 2]).all()
    assert (boxes[1:, 0] >= boxes[:-1, 0]).all()  # left to right, one per column
    layout = tmp_path / "layout.json"
    layout.write_text('{"regions": [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]}')
    assert load_layout(layout).tolist() == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]
    layout.write_text('{"regions": [[0.5, 0, 0.2, 1]]}')
    with pytest.raises(InputError, match="x0 < x1"):
        load_layout(layout)
