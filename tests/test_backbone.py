"""Backbone loading: tiny models saved to disk and loaded through from_pretrained."""
import time

import pytest
import torch
from transformers import CLIPTokenizer

from ldm_ext.backbone import BackboneError, encode_prompt, load_backbone, tokenize
from ldm_ext.config import load_config
from ldm_ext.tiny import save_tiny_backbone
from ldm_ext.tokenizer import PROBE_IDS, build_clip_tokenizer, check_tokenizer


def model_cfg(*overrides):
    return load_config("configs/experiment/demo.yaml", list(overrides)).model


def test_tokenizer_is_real_clip_bpe(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "tok")
    loaded = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert len(loaded) == 49408
    assert loaded("a photo of a man").input_ids == [49406, *PROBE_IDS, 49407]
    assert loaded.tokenize("woman") == ["woman</w>"] and tok.model_max_length == 77


def test_broken_tokenizer_is_refused():
    class TwoTokens:
        def __len__(self):
            return 2

        def __call__(self, text, add_special_tokens=False):
            return type("Enc", (), {"input_ids": [0, 1]})()

    with pytest.raises(RuntimeError, match="broken"):
        check_tokenizer(TwoTokens(), "hub")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_tiny_backbone_round_trip(tmp_path, family):
    folder = save_tiny_backbone(tmp_path / family, family)
    bb = load_backbone(model_cfg(f"model.pretrained={folder}", f"model.family={family}"))
    hidden, pooled = encode_prompt(bb, tokenize(bb, ["a photo of a man", ""]))
    assert hidden.shape == (2, 77, bb.unet.config.cross_attention_dim)
    assert (pooled is None) == (family == "sd15")
    assert bb.num_levels == (4 if family == "sd15" else 3) and bb.vae_scale == 8
    added = None if pooled is None else {"text_embeds": pooled, "time_ids": torch.zeros(2, 6)}
    latents = torch.randn(2, 4, 8, 8)
    down, mid = bb.controlnet(latents, torch.tensor([1, 999]), hidden,
                              controlnet_cond=torch.rand(2, 3, 64, 64),
                              added_cond_kwargs=added, return_dict=False)
    out = bb.unet(latents, torch.tensor([1, 999]), hidden, added_cond_kwargs=added,
                  down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()
    # ControlNet from the UNet starts with zero outputs: no effect before training
    plain = bb.unet(latents, torch.tensor([1, 999]), hidden, added_cond_kwargs=added).sample
    torch.testing.assert_close(out, plain)


def test_tiny_is_deterministic(tmp_path):
    a = save_tiny_backbone(tmp_path / "a")
    b = save_tiny_backbone(tmp_path / "b")
    assert (a / "unet/diffusion_pytorch_model.safetensors").read_bytes() == \
        (b / "unet/diffusion_pytorch_model.safetensors").read_bytes()


def test_missing_weights_offline_fail_fast_and_clearly(tmp_path):
    start = time.monotonic()
    with pytest.raises(BackboneError) as err:
        load_backbone(model_cfg("model.pretrained=stable-diffusion-v1-5/stable-diffusion-v1-5"))
    assert time.monotonic() - start < 5
    assert "UNet" in str(err.value) and "model.pretrained" in str(err.value)


def test_missing_controlnet_is_named(tmp_path):
    folder = save_tiny_backbone(tmp_path / "sd")
    with pytest.raises(BackboneError, match="ControlNet"):
        load_backbone(model_cfg(f"model.pretrained={folder}",
                                "model.controlnet=lllyasviel/sd-controlnet-openpose"))


def test_building_the_tiny_backbone_leaves_the_random_state_alone(tmp_path):
    """A run that builds the cache on first use draws what a run finding it built draws
    (the first run of a fresh cache trained from other initial weights)."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    save_tiny_backbone(tmp_path / "sd15")
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("controlnet", ["from_unet", "pretrained"])
def test_frozen_controlnet_is_loaded_in_the_weight_dtype(tmp_path, controlnet):
    folder = save_tiny_backbone(tmp_path / "sd")
    spec = controlnet
    if controlnet == "pretrained":
        spec = str(tmp_path / "controlnet")
        load_backbone(model_cfg(f"model.pretrained={folder}")).controlnet.save_pretrained(spec)
    bb = load_backbone(model_cfg(f"model.pretrained={folder}", f"model.controlnet={spec}",
                                 "model.weight_dtype=bf16"))
    assert bb.controlnet.dtype == bb.unet.dtype == torch.bfloat16
