"""StoryMaker's modules (Eq. 3-8) and the released checkpoints: random checkpoints in the
released key layouts (``official_layouts``) load strictly and give the released forwards'
tokens (fp32, 1e-5)."""
from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from official_layouts import (adapter_shapes, faceid_forward, faceid_shapes, perceiver_shapes,
                              random_state, resampler_forward, storymaker_forward,
                              storymaker_shapes)
from safetensors.torch import save_file

from ldm_ext.adapters.face_tokens import FaceIDPlusTokens
from ldm_ext.adapters.lora import add_lora, lora_layers, lora_scale
from ldm_ext.adapters.ppr import PositionalPerceiverResampler
from ldm_ext.adapters.released import (ReleasedWeightsError, faceid_plusv2_targets,
                                       ip_adapter_plus_targets, load_released, storymaker_targets)
from ldm_ext.adapters.resampler import Resampler
from ldm_ext.attention import AttentionContext, install_processors
from ldm_ext.tiny import tiny_backbone_dir
from ldm_ext.weights import CheckpointError

CROSS, CLIP, DIM, HEADS = 64, 32, 32, 2  # tiny SDXL cross width, tiny CLIP, resampler


def tiny_unet(rank: int = 4, layers: str = "all", targets=("to_q", "to_k", "to_v", "to_out.0")):
    unet = UNet2DConditionModel.from_pretrained(tiny_backbone_dir("sdxl") / "unet")
    install_processors(unet, decoupled=True)
    add_lora(unet, rank, list(targets), layers)
    return unet


def ppr_modules(face_depth: int = 2, depth: int = 2) -> PositionalPerceiverResampler:
    face = FaceIDPlusTokens(CROSS, clip_dim=CLIP, depth=face_depth)
    character = Resampler(dim=DIM, depth=depth, heads=HEADS, embedding_dim=CLIP, output_dim=CROSS)
    return PositionalPerceiverResampler(face, character)


def inputs(k: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.nn.functional.normalize(torch.randn(k, 512, generator=gen), dim=-1)
    return ids, torch.randn(k, 50, CLIP, generator=gen), torch.randn(k, 50, CLIP, generator=gen)


def test_faceid_and_plus_checkpoints_load_and_give_released_tokens(tmp_path):
    faceid = random_state(faceid_shapes("", CROSS, CLIP, depth=2))
    plus = random_state(perceiver_shapes("", DIM, 2, HEADS, CLIP, CROSS, queries=16), seed=1)
    torch.save({"image_proj": faceid, "ip_adapter": {}}, tmp_path / "faceid.bin")
    save_file({f"image_proj.{k}": v for k, v in plus.items()}, tmp_path / "plus.safetensors")
    ppr = ppr_modules()
    assert load_released(tmp_path / "faceid.bin", faceid_plusv2_targets(ppr.face)) == ["ip_adapter"]
    assert load_released(tmp_path / "plus.safetensors",
                         ip_adapter_plus_targets(ppr.character)) == []
    ids, faces, chars = inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(ppr.face(ids, faces),
                                   faceid_forward(faceid, "", ids, faces, CROSS),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ppr.character(chars),
                                   resampler_forward(plus, "", chars, HEADS), atol=1e-5, rtol=1e-5)


def test_storymaker_checkpoint_loads_strictly_and_gives_its_tokens(tmp_path):
    """Eq. 4-7 as released: ((N+1)·20, D) tokens, background first; LoRA and K_i/V_i land
    in the layers IP-Adapter's ModuleList index names."""
    unet, ppr = tiny_unet(), ppr_modules()
    proj = random_state(storymaker_shapes(CROSS, CLIP, 2, DIM, 2, HEADS), seed=2)
    adapter = random_state(adapter_shapes(unet, rank=4), seed=3)
    torch.save({"image_proj_model": proj, "ip_adapter": adapter}, tmp_path / "mask.bin")
    assert load_released(tmp_path / "mask.bin", storymaker_targets(ppr, unet)) == []
    ids, faces, chars = inputs(2)
    with torch.no_grad():
        ours = ppr(ids, faces, chars, torch.ones(1, 2, dtype=torch.bool))[0]
        torch.testing.assert_close(ours, storymaker_forward(proj, ids, chars, faces, CROSS, HEADS),
                                   atol=1e-5, rtol=1e-5)
    first = next(iter(unet.attn_processors)).removesuffix(".processor")
    assert torch.equal(unet.get_parameter(f"{first}.to_out.0.lora_B.default.weight"),
                       adapter["0.to_out_lora.up.weight"])
    cross = [k for k in adapter if k.endswith("to_k_ip.weight")][0]
    name = list(unet.attn_processors)[int(cross.split(".")[0])].removesuffix(".processor")
    assert torch.equal(unet.get_parameter(f"{name}.processor.to_k_ip.weight"), adapter[cross])


def test_loading_names_missing_unexpected_and_misshapen_keys(tmp_path):
    ppr = ppr_modules()
    good = random_state(faceid_shapes("", CROSS, CLIP, depth=2))
    cases = {"missing": ({k: v for k, v in good.items() if k != "norm.bias"}, "norm.bias"),
             "unexpected": ({**good, "extra.weight": torch.zeros(1)}, "extra.weight"),
             "shape": ({**good, "norm.weight": torch.zeros(3)}, "norm.weight")}
    for case, (state, named) in cases.items():
        torch.save({"image_proj": state}, tmp_path / f"{case}.bin")
        with pytest.raises(ReleasedWeightsError, match=named.replace(".", r"\.")):
            load_released(tmp_path / f"{case}.bin", faceid_plusv2_targets(ppr.face))
    with pytest.raises(ReleasedWeightsError, match="no 'ip_adapter' section"):
        load_released(tmp_path / "missing.bin", {"ip_adapter": {}})
    torch.save({"image_proj": good, "payload": torch.nn.Linear(1, 1)}, tmp_path / "pickled.bin")
    with pytest.raises(CheckpointError, match="refused"):
        load_released(tmp_path / "pickled.bin", faceid_plusv2_targets(ppr.face))


def test_decoupled_lora_layer_matches_the_released_processor():
    """Eq. 3 + Eq. 8: Z = Attn(Q, K_t, V_t) + γ Attn(Q, K_i, V_i), Q/K_t/V_t/out with ΔW at
    the LoRA scale, as ``LoRAIPAttnProcessor2_0`` computes it."""
    unet = tiny_unet(rank=4)
    name = next(n for n in unet.attn_processors if n.endswith("attn2.processor"))
    attn = unet.get_submodule(name.removesuffix(".processor"))
    for layer in lora_layers(attn).values():
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    hidden, text, image = torch.randn(2, 16, attn.query_dim), torch.randn(2, 77, CROSS), \
        torch.randn(2, 40, CROSS)
    with torch.no_grad(), lora_scale(unet, 0.8):
        ours = attn(hidden, encoder_hidden_states=text,
                    ctx=AttentionContext(image_tokens=image, ip_scale=0.6))
    with torch.no_grad():
        def proj(module, x):  # base + 0.8 * up(down(x)) as LoRALinearLayer
            delta = module.lora_B["default"](module.lora_A["default"](x))
            return module.base_layer(x) + 0.8 * delta

        def heads(x):
            return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        q = heads(proj(attn.to_q, hidden))
        out = sdpa(q, heads(proj(attn.to_k, text)), heads(proj(attn.to_v, text)))
        ip = sdpa(q, heads(attn.processor.to_k_ip(image)), heads(attn.processor.to_v_ip(image)))
        ref = proj(attn.to_out[0], (out + 0.6 * ip).transpose(1, 2).flatten(2))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert all(layer.scaling["default"] == 1.0 for layer in lora_layers(unet).values())


def test_ppr_equations_positions_background_and_zeroed_characters():
    """Zero-initialised fuse: E_i = Cat(E1, E2) + E_pos[slot] (Eq. 6), background first
    (Eq. 7); an absent slot is zero; zero_character keeps E1 only."""
    ppr = ppr_modules(1, 1)
    with torch.no_grad():
        ppr.position.normal_()
        ppr.background.normal_()
    valid = torch.tensor([[True, False, True], [True, True, False]])
    ids, faces, chars = inputs(4)
    zero = torch.tensor([False, True, False, False])
    with torch.no_grad():
        out = ppr(ids, faces, chars, valid, zero_character=zero).unflatten(1, (4, 20))
        e1, e2 = ppr.face(ids, faces), ppr.character(chars)
    assert out.shape == (2, 4, 20, CROSS)
    torch.testing.assert_close(out[:, 0], ppr.background.expand(2, -1, -1))
    torch.testing.assert_close(out[0, 1], torch.cat([e1[0], e2[0]]) + ppr.position[0])
    torch.testing.assert_close(out[0, 3], torch.cat([e1[1], 0 * e2[1]]) + ppr.position[2])
    torch.testing.assert_close(out[1, 2], torch.cat([e1[3], e2[3]]) + ppr.position[1])
    assert out[0, 2].abs().sum() == 0 and out[1, 3].abs().sum() == 0


def test_lora_targets_official_and_paper():
    """Official: to_q/k/v/out of every attention layer; paper: W_q, W_k^t, W_v^t of the
    cross-attention layers; the decoupled K_i / V_i are never wrapped."""
    official, paper = tiny_unet(), tiny_unet(layers="cross", targets=("to_q", "to_k", "to_v"))
    layers = len(official.attn_processors)
    assert len(lora_layers(official)) == 4 * layers
    assert len(lora_layers(paper)) == 3 * layers // 2
    assert not any("processor" in name for name in lora_layers(official))
