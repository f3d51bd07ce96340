"""SeFi-IDE per equation (docs/methods.md §2) on the tiny backbones: stage mapping, stage tokens,
pseudo-words in the text encoder(s), split K/V conditions, the face-wise attention loss
(Eq. 4) in one UNet pass, and identity files."""
from __future__ import annotations

import pytest
import torch

from ldm_ext.adapters.pseudo_words import encode, placeholder_identities, tokenize
from ldm_ext.adapters.stage_tokens import StageTokens, stage_of
from ldm_ext.attention import AttentionContext, AttentionStore
from ldm_ext.backbone import encode_prompt
from ldm_ext.backbone import tokenize as tokenize_plain
from ldm_ext.cli import InputError
from ldm_ext.config import load_config
from ldm_ext.losses import face_attention_loss
from ldm_ext.methods.loading import build_method
from ldm_ext.methods.sefi_ide import LayerMeans

TINY = "configs/experiment/sefi_ide_tiny.yaml"
TARGET = "a photo of the face of V*"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def method():
    return build_method(load_config(TINY)).eval()


@pytest.fixture(scope="module")
def method_xl():
    return build_method(load_config(TINY, ["model=tiny_sdxl", "model.controlnet=null"])).eval()


def test_stage_edges():
    """Stage 0 (the paper's stage 1) is the first fifth of denoising: t in [800, 1000)."""
    t = torch.tensor([999, 800, 799, 600, 599, 400, 399, 200, 199, 0])
    assert stage_of(t).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert stage_of(t, num_stages=1).tolist() == [0] * 10
    assert stage_of(torch.tensor([19, 20]), 2, num_train_timesteps=40).tolist() == [1, 0]


def test_stage_tokens_start_at_the_word_and_round_trip():
    word = torch.randn(16)
    module = StageTokens(word, num_stages=5, width=8, heads=2, ff_mult=2)
    tokens = module()
    assert tokens.shape == (5, 2, 16)
    torch.testing.assert_close(tokens, word.expand(5, 2, 16))  # V* reads as the word
    with torch.no_grad():
        module.slots.normal_()
        module.out_proj.weight.normal_()
    state = {f"p.{k}": v for k, v in module.state_dict().items()}
    copy = StageTokens.from_state(state, module.hparams, prefix="p.")
    torch.testing.assert_close(copy(), module())
    assert not torch.allclose(module()[0], module()[1])  # stages differ once trained
    with pytest.raises(ValueError, match="divisible"):
        StageTokens(word, width=10, heads=4)


def test_placeholders(method):
    assert placeholder_identities("a man V* and a woman V*") == [0, 1]
    assert placeholder_identities("V2* hugs V1* (not AV* or V**)") == [1, 0]
    with pytest.raises(ValueError, match="V1"):
        placeholder_identities("V0* at the beach")
    tok, stand_in = method.backbone.tokenizers[0], method.stand_in
    plain = tok("a photo of a man", padding="max_length", max_length=77).input_ids
    assert tokenize(tok, "a photo of a man", stand_in)[0] == plain
    ids, slots = tokenize(tok, "V1* and V2*, at the beach", stand_in)
    person = tok("person and person, at the beach", padding="max_length",
                 max_length=77).input_ids
    assert ids == person and slots == [(1, 0), (3, 1)]
    long_ids, long_slots = tokenize(tok, "a " * 80 + "V*", stand_in)
    assert len(long_ids) == 77 and long_slots == []  # cut off like any token past 76


def test_pseudo_word_reaches_the_encoder_with_gradients(method):
    backbone, word = method.backbone, method.stage_tokens.word.detach()
    token = word.clone().requires_grad_(True)
    hidden, _ = encode(backbone, [TARGET], [token[None]], method.stand_in)
    reference, _ = encode_prompt(backbone, tokenize_plain(backbone, [TARGET.replace(
        "V*", "person")]))
    torch.testing.assert_close(hidden, reference, rtol=0, atol=0)
    hidden.sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.text_encoders[0].parameters())


def test_sdxl_both_encoders_read_their_slice(method_xl):
    """SDXL: the 2 x 32-wide tiny identity vector, first half to encoder 1, rest to 2."""
    word = method_xl.stage_tokens.word.detach()
    assert word.shape == (64,)
    moved = word.clone()
    moved[32:] += 1.0  # only encoder 2's slice
    base, pooled = encode(method_xl.backbone, [TARGET], [word[None]], method_xl.stand_in)
    other, pooled2 = encode(method_xl.backbone, [TARGET], [moved[None]], method_xl.stand_in)
    torch.testing.assert_close(other[..., :32], base[..., :32])
    assert not torch.allclose(other[..., 32:], base[..., 32:])
    # pooled comes from encoder 2: it moves with encoder 2's slice (through attention, by
    # little in a random tiny encoder: exact comparisons) and not with encoder 1's
    assert not torch.equal(pooled2, pooled)
    first = word.clone()
    first[:32] += 1.0
    _, pooled1 = encode(method_xl.backbone, [TARGET], [first[None]], method_xl.stand_in)
    assert torch.equal(pooled1, pooled)


def test_sdxl_fits_and_samples(method_xl):
    """SDXL: the step runs with the added conditioning of the value condition; sampling
    with the module's own identity."""
    losses = _step(method_xl)
    assert losses["attention"].item() == 0.0 and torch.isfinite(losses["loss"])
    image = method_xl.pipeline()("a photo of V*", None, size=(64, 64), steps=1,
                                 progress=False)
    assert image.size == (64, 64)


def _perturbed(method) -> dict:
    state = {k: v.clone() for k, v in method.stage_tokens.state_dict().items()}
    with torch.no_grad():
        method.stage_tokens.slots.normal_(0, 0.5)
    return state


def test_key_and_value_conditions(method):
    """Sec. III-C: keys read V* as P_i^K, values as P_i^V (causal CLIP: the tokens before
    V* are the same); the stage picks the pair."""
    saved = _perturbed(method)
    try:
        tokens = method.identity_tokens()[None]  # (1, S, 2, D)
        keys, values, _ = method.conditions([TARGET] * 2, [tokens] * 2, torch.tensor([0, 4]))
        pos = tokenize(method.backbone.tokenizers[0], TARGET, method.stand_in)[1][0][0]
        torch.testing.assert_close(keys[:, :pos], values[:, :pos])
        assert not torch.allclose(keys[:, pos], values[:, pos])
        assert not torch.allclose(keys[0, pos], keys[1, pos])  # stage 0 vs stage 4 pair
    finally:
        method.stage_tokens.load_state_dict(saved)


def _step(method, seed: int = 0) -> dict:
    batch = {"pixel_values": torch.rand(1, 3, 64, 64) * 2 - 1, "caption": [TARGET]}
    return method.model_step(batch, torch.Generator().manual_seed(seed))


def test_attention_loss_zero_when_target_equals_reference(method):
    """Untrained, V* reads as "person": y_t's keys are y_r's, so A_t == A_r exactly."""
    losses = _step(method)
    assert losses["attention"].item() == 0.0
    torch.testing.assert_close(losses["loss"], losses["noise"])


def test_attention_loss_gradient_reaches_only_the_identity(method):
    saved = _perturbed(method)
    try:
        method.zero_grad(set_to_none=True)
        attention = _step(method)["attention"]
        assert attention.item() > 0
        attention.backward()
        grads = {n for n, p in method.named_parameters() if p.grad is not None}
        assert grads and all(n.startswith("stage_tokens.") for n in grads)
        assert "stage_tokens.word" not in grads  # P stays the initializer's
        assert method.stage_tokens.slots.grad.abs().sum() > 0
    finally:
        method.stage_tokens.load_state_dict(saved)
        method.zero_grad(set_to_none=True)


def test_face_attention_loss_is_the_mse_of_layer_means(method):
    """Alg. 1: each layer's maps resized to 32x32, averaged over layers (per head count),
    then the MSE with A_r detached; the store sums same-grid layers before resizing."""
    store = AttentionStore(lambda n: True, size=4)
    means = LayerMeans(lambda n: True, size=4)
    probs = {("a", 2, 8): torch.rand(1, 2, 64, 5), ("b", 2, 4): torch.rand(1, 2, 16, 5),
             ("c", 2, 8): torch.rand(1, 2, 64, 5), ("d", 4, 4): torch.rand(1, 4, 16, 5)}
    for (name, _, side), p in probs.items():
        for target in (store, means):
            target.record(name, p, (side, side))
            target.record(f"{name}:ref", p.flip(-1), (side, side))
    for tag in ("", ":ref"):
        two_heads = torch.stack([store.maps[n + tag] for n in "abc"]).mean(0)
        got = means.means(tag.lstrip(":"))
        torch.testing.assert_close(got[0], two_heads)
        torch.testing.assert_close(got[1], store.maps["d" + tag])
    a_t = [m.requires_grad_(True) for m in means.means()]
    a_r = [m.requires_grad_(True) for m in means.means("ref")]
    loss = face_attention_loss(a_t, a_r)
    expected = sum((t - r).pow(2).sum() for t, r in zip(a_t, a_r)) / sum(t.numel() for t in a_t)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert a_t[0].grad is not None and a_r[0].grad is None


def test_one_unet_pass_probes_the_same_queries(method):
    """The y_r maps come from the queries of the pass itself: at the first cross-attention
    layer (whose queries do not depend on the text) they equal a separate y_r pass; later
    they do not (that pass's earlier layers attended to other values). Probes change no
    output and carry no gradient; the split values change outputs, not maps."""
    backbone, unet = method.backbone, method.unet
    target, _ = encode_prompt(backbone, tokenize_plain(backbone, ["a red car on a road"]))
    ref, _ = encode_prompt(backbone, tokenize_plain(backbone, ["a photo of the face of person"]))
    noisy, t = torch.randn(1, 4, 8, 8), torch.tensor([500])

    def run(keys, values, probes=None):
        store = AttentionStore(lambda n: "attn2" in n, size=4)
        ctx = AttentionContext(value_states=values, store=store, probe_states=probes)
        return unet(noisy, t, keys, cross_attention_kwargs={"ctx": ctx}).sample, store.maps

    out, maps = run(target, target, {"ref": ref})
    plain, _ = run(target, target)
    separate, ref_maps = run(ref, ref)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    layers = [n for n in maps if ":" not in n]
    torch.testing.assert_close(maps[f"{layers[0]}:ref"], ref_maps[layers[0]])
    assert not torch.allclose(maps[f"{layers[-1]}:ref"], ref_maps[layers[-1]], atol=1e-6)
    assert not maps[f"{layers[0]}:ref"].requires_grad
    split, split_maps = run(target, ref)
    assert not torch.allclose(split, plain)
    torch.testing.assert_close(split_maps[layers[0]], maps[layers[0]])


def test_identity_file_round_trip(method, tmp_path):
    saved = _perturbed(method)
    try:
        method.save_trainable(tmp_path / "id.safetensors", {"global_step": "3"})
        pipe = method.pipeline()
        tokens = pipe.identity_from_weights(str(tmp_path / "id.safetensors"))
        torch.testing.assert_close(tokens, method.identity_tokens())
    finally:
        method.stage_tokens.load_state_dict(saved)
    with pytest.raises(InputError, match="names identity 3, 2 given"):
        pipe("V1* and V3*", [tokens, tokens], size=(64, 64), steps=1)
    with pytest.raises(InputError, match="names no identity"):
        pipe("a photo of a man", [tokens], size=(64, 64), steps=1)


def test_identity_of_another_width_is_refused(method, method_xl, tmp_path):
    method_xl.save_trainable(tmp_path / "xl.safetensors")
    with pytest.raises(InputError, match="token width 64, this model's is 32"):
        method.pipeline().identity_from_weights(str(tmp_path / "xl.safetensors"))


def test_sampling_picks_the_stage_by_the_identity_s_own_stage_count(method, monkeypatch):
    """An identity file fitted with another ``num_stages`` than the loaded run (its sizes
    travel with it) is sampled with its own split of the timesteps: 2 stages -> t >= 500
    reads pair 0, t < 500 pair 1 (the run's 5-stage split would read pair 1 at t = 751
    and a pair that does not exist at t = 251)."""
    word = method.stage_tokens.word.detach()
    module = StageTokens(word, num_stages=2, width=8, heads=2, ff_mult=2)
    with torch.no_grad():
        module.slots.normal_(0, 0.5)
    tokens = module()  # (2, 2, D)
    pipe = method.pipeline()
    keys, values, _ = method.conditions([TARGET] * 2, [tokens[None]] * 2, torch.tensor([0, 1]))
    seen = []
    original = method.predict_noise

    def spy(noisy, t, keys_in, ctx, added=None):
        seen.append((int(t[0]), keys_in[1:], ctx.value_states[1:]))
        return original(noisy, t, keys_in, ctx, added)

    monkeypatch.setattr(method, "predict_noise", spy)
    pipe(TARGET, [tokens], size=(64, 64), steps=4, progress=False)
    assert [t for t, _, _ in seen] == [751, 501, 251, 1]
    for t, keys_in, values_in in seen:
        stage = 0 if t >= 500 else 1
        torch.testing.assert_close(keys_in, keys[stage:stage + 1])
        torch.testing.assert_close(values_in, values[stage:stage + 1])


@pytest.mark.parametrize("steps, visited", [(4, [1, 2, 3, 4]), (1, [4]), (10, [0, 1, 2, 3, 4])])
def test_sampling_encodes_only_the_stages_its_steps_visit(method, monkeypatch, steps, visited):
    """Conditions are encoded for the stages of the schedule's timesteps alone (4 DDIM
    steps: t = 751, 501, 251, 1, none in stage 0's [800, 1000)), each picked at its step."""
    encoded, used = [], []
    conditions, predict = method.conditions, method.predict_noise

    def encode_spy(prompts, identities, stages):
        encoded.append(stages.tolist())
        return conditions(prompts, identities, stages)

    def predict_spy(noisy, t, keys, ctx, added=None):
        used.append((int(method.stages(t[:1])), keys[1:], ctx.value_states[1:]))
        return predict(noisy, t, keys, ctx, added)

    monkeypatch.setattr(method, "conditions", encode_spy)
    monkeypatch.setattr(method, "predict_noise", predict_spy)
    method.pipeline(scheduler="ddim")(TARGET, None, size=(32, 32), steps=steps, progress=False)
    assert encoded == [visited]
    tokens = method.identity_tokens()[None]
    for stage, keys, values in used:
        want_keys, want_values, _ = conditions([TARGET], [tokens], torch.tensor([stage]))
        torch.testing.assert_close(keys, want_keys)
        torch.testing.assert_close(values, want_values)


def test_sampling_records_maps_on_the_true_grid_of_a_wide_image(method):
    """A store given to the pipeline gets each layer's real query grid: a 32 x 128 image
    (latent 4 x 16, 64 queries) is not the 8 x 8 square its query count also fits."""
    grids = []

    class Grids(AttentionStore):
        def record(self, name, probs, hw):
            grids.append(tuple(hw))

    method.pipeline()("a photo of V*", None, size=(32, 128), steps=1, progress=False,
                      store=Grids(lambda n: "attn2" in n))
    assert grids and (4, 16) in grids and (8, 8) not in grids


def test_noise_loss_counts_only_the_pasted_photo(method, monkeypatch):
    """Random scaling pastes the photo on a grey canvas (``datamodules/single_image.py``);
    L_KV (Eq. 5) is taken over the pasted region (``mask``) only, so V* is not fitted to the
    padding. Error 9 inside the top-left quarter (the photo), 1 on the canvas: L_KV = 9;
    each sample weighs the same whatever its photo's size."""
    monkeypatch.setitem(method.cfg.method, "attention_loss_weight", 0.0)
    target = torch.ones(2, 4, 8, 8)
    target[0, :, :4, :4] = 3.0
    target[1, :, :2, :2] = 2.0
    monkeypatch.setattr(method, "noised_latents",
                        lambda latents, gen: (latents, torch.tensor([500, 500]), target))
    monkeypatch.setattr(method, "predict_noise", lambda noisy, *a, **k: torch.zeros_like(noisy))
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, :32, :32] = 1.0
    mask[1, :, :16, :16] = 1.0
    batch = {"pixel_values": torch.rand(2, 3, 64, 64) * 2 - 1, "caption": [TARGET] * 2,
             "mask": mask}
    loss = method.model_step(batch, torch.Generator().manual_seed(0))["noise"]
    torch.testing.assert_close(loss, torch.tensor((9.0 + 4.0) / 2))
