"""InstantFamily module: embedding stack (Eq. 4-5), what trains, checkpointing equivalence."""
from __future__ import annotations

import pytest
import torch

from datamodules.demo import random_batch
from ldm_ext.adapters.embedding_stack import FaceProjector, stack_embeddings
from ldm_ext.config import load_config
from ldm_ext.methods.loading import build_method


def make(*overrides):
    return build_method(load_config("configs/experiment/demo.yaml", list(overrides)))


@pytest.fixture(scope="module")
def method():
    return make("method.train_unet=false")  # the paper's recipe; the demo also trains the UNet


def test_face_projector_tokens():
    proj = FaceProjector(global_dim=512, local_dim=1792, token_dim=32)
    tokens = proj(torch.randn(5, 512), torch.randn(5, 1792, 3, 3))
    assert tokens.shape == (5, 10, 32)  # L² + 1 = 10 tokens per face
    # token 0 is the global stream, LayerNorm'd: zero mean, unit variance per token
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(5, 10), atol=1e-5, rtol=0)


def test_local_tokens_follow_spatial_order():
    proj = FaceProjector(2, 3, 4)
    local = torch.zeros(1, 3, 2, 2)
    local[0, :, 1, 0] = torch.tensor([1.0, 2.0, 3.0])  # row 1, col 0 -> token 1 + 2
    tokens = proj(torch.zeros(1, 2), local)
    expected = proj.local_proj(torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(tokens[0, 3], expected[0])


def test_face_tokens_encode_only_valid_slots(method, monkeypatch):
    """Empty slots skip the face encoder and stay zero; valid ones equal their own encoding."""
    crops = torch.rand(2, 3, 3, 160, 160) * 2 - 1  # (B, N, 3, S, S)
    valid = torch.tensor([[True, False, False], [True, True, False]])
    seen = []
    encode = method.face_encoder.encode
    monkeypatch.setattr(method.face_encoder, "encode", lambda x: seen.append(len(x)) or encode(x))
    tokens = method.face_tokens(crops, valid)
    assert seen == [3] and tokens.shape[:2] == (2, 3)
    assert (tokens[~valid] == 0).all()
    alone = encode(crops[1, 1:2])
    expected = method.face_projector(alone.global_.float(), alone.local.float())[0]
    torch.testing.assert_close(tokens[1, 1], expected)


def test_stack_is_text_then_faces_and_zeroes_empty_slots():
    text, faces = torch.randn(2, 77, 8), torch.randn(2, 3, 10, 8)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    stack = stack_embeddings(text, faces, valid)
    assert stack.shape == (2, 77 + 30, 8)
    torch.testing.assert_close(stack[:, :77], text)
    torch.testing.assert_close(stack[0, 77 + 10:77 + 20], faces[0, 1])
    assert (stack[0, 77 + 20:] == 0).all() and (stack[1, 77 + 10:] == 0).all()


def test_only_controlnet_and_projector_train(method):
    names = method.trainable_parameters().keys()
    assert {n.split(".")[0] for n in names} == {"controlnet", "face_projector"}
    trainable = {id(p) for p in method.trainable_parameters().values()}
    for name, p in method.named_parameters():
        assert p.requires_grad == (id(p) in trainable), name
    opt = method.configure_optimizers()["optimizer"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    assert all(p.dtype == torch.float32 for p in method.trainable_parameters().values())


def test_unet_kv_option_adds_cross_attention_projections():
    method = make("method.train_unet_kv=true", "method.train_unet=false")
    names = method.trainable_parameters().keys()
    unet = [n for n in names if n.startswith("unet.")]
    assert unet and all("attn2.to_k" in n or "attn2.to_v" in n for n in unet)


def test_unet_option_trains_the_whole_unet():
    method = make("method.train_unet=true")
    names = method.trainable_parameters().keys()
    assert {n.split(".")[0] for n in names} == {"controlnet", "face_projector", "unet"}
    assert all(p.requires_grad for p in method.unet.parameters())
    assert not any(p.requires_grad for p in method.vae.parameters())


def test_frozen_parts_stay_in_eval_mode(method):
    method.train()
    assert method.controlnet.training and method.face_projector.training
    assert not method.unet.training and not method.face_encoder.training
    assert not method.vae.training


def test_empty_prompt_rate(method):
    gen = torch.Generator().manual_seed(0)
    dropped = method.drop_captions(["x"] * 4000, gen).count("")
    assert abs(dropped / 4000 - 0.5) < 0.03


def test_gradient_checkpointing_gives_same_loss_and_grads():
    torch.manual_seed(0)
    method = make()
    method.train()
    batch = random_batch(2, 64)

    def loss_and_grads():
        method.zero_grad(set_to_none=True)
        loss = method.model_step(batch, torch.Generator().manual_seed(3))["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in method.trainable_parameters().values()]

    plain_loss, plain_grads = loss_and_grads()
    method.set_gradient_checkpointing(True)
    ckpt_loss, ckpt_grads = loss_and_grads()
    torch.testing.assert_close(ckpt_loss, plain_loss)
    for a, b in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in plain_grads)


def test_bf16_autocast_step_runs(method):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.model_step(random_batch(1, 64), torch.Generator().manual_seed(0))["loss"]
    assert torch.isfinite(loss)


def test_attention_hooks_pick_unet_cross_attention_and_face_groups(method):
    assert method.attention_layers("up_blocks.1.attentions.0.transformer_blocks.0.attn2")
    assert not method.attention_layers("up_blocks.1.attentions.0.transformer_blocks.0.attn1")
    assert not method.attention_layers(
        "controlnet.down_blocks.0.attentions.0.transformer_blocks.0.attn2")
    per_face = method.tokens_per_face
    groups = method.identity_key_groups(77 + 2 * per_face, 2)
    assert groups == [slice(0, 77), slice(77, 77 + per_face),
                      slice(77 + per_face, 77 + 2 * per_face)]
