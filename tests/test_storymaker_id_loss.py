"""StoryMaker's optional ID loss (docs/methods.md §3: PortraitBooth's DIP with a torch ArcFace) on
the tiny demo: off by default and then nothing is decoded, only characters at t <= 250 are
decoded, its gradient reaches the trainable modules, missing weights fail at build time."""
from __future__ import annotations

import pytest
import torch

from ldm_ext.config import load_config
from ldm_ext.face import FaceModelMissing
from ldm_ext.methods.loading import build_method
from ldm_ext.methods.storymaker_encoders import build_id_loss_encoder

DEMO = "configs/experiment/storymaker_demo.yaml"
NO_DROPS = ["method.empty_prompt_prob=0", "method.drop_characters=0", "method.drop_both=0",
            "method.drop_face_tokens=0", "method.drop_character_tokens=0"]
ID_LOSS = ["method.id_loss_weight=1", "method.id_loss_weights=random", "method.id_loss_arch=r18"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def method():
    return build_method(load_config(DEMO, [*NO_DROPS, *ID_LOSS])).train()


def batch(size: int = 64) -> dict:
    """Three images with one, two and three characters, faces in the top third."""
    gen = torch.Generator().manual_seed(0)
    valid = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    masks = torch.zeros(3, 3, size, size)
    boxes = torch.zeros(3, 3, 4)
    for k in range(3):
        masks[:, k, size // 4:, k * size // 3:(k + 1) * size // 3] = 1
        boxes[:, k] = torch.tensor([k / 3, 0.05, (k + 1) / 3, 0.35])
    return {"pixel_values": torch.rand(3, 3, size, size, generator=gen) * 2 - 1,
            "caption": ["a person", "two people", "three people"],
            "face_crops": torch.rand(3, 3, 3, 224, 224, generator=gen) * 2 - 1,
            "characters": torch.rand(3, 3, 3, 224, 224, generator=gen),
            "character_masks": masks * valid[:, :, None, None],
            "face_boxes": boxes * valid[:, :, None], "face_valid": valid}


def step(method, monkeypatch, timesteps: list[int]) -> tuple[dict, list[int]]:
    """model_step at the given timesteps; also the batch sizes handed to the VAE decoder."""
    decoded, decode, noised = [], method.vae.decode, method.noised_latents

    def at(latents, generator):
        noisy, t, target = noised(latents, generator)
        return noisy, torch.tensor(timesteps, device=t.device), target

    monkeypatch.setattr(method.vae, "decode", lambda z: decoded.append(len(z)) or decode(z))
    monkeypatch.setattr(method, "noised_latents", at)
    return method.model_step(batch(), torch.Generator().manual_seed(1)), decoded


def test_off_or_late_timesteps_decode_nothing(method, monkeypatch):
    late, decoded = step(method, monkeypatch, [251, 600, 999])
    assert late["id"].item() == 0 and decoded == []
    monkeypatch.setitem(method.cfg.method, "id_loss_weight", 0.0)
    early, decoded = step(method, monkeypatch, [0, 100, 250])
    assert "id" not in early and decoded == []
    off, _ = step(method, monkeypatch, [251, 600, 999])
    torch.testing.assert_close(off["loss"], late["loss"])  # the late ID term added nothing


def test_id_term_decodes_needed_characters_and_trains_the_modules(method, monkeypatch):
    """t = 100, 600, 100: the one character of sample 0 and the three of sample 2 are
    decoded, one window each; backward of the ID term alone reaches PPR, K_i/V_i and LoRA."""
    method.zero_grad(set_to_none=True)
    losses, decoded = step(method, monkeypatch, [100, 600, 100])
    assert decoded == [1, 1, 1, 1]
    assert 0 < losses["id"].item() <= 2 * 4 / 6  # mean over 6 present characters, 2 of them 0
    torch.testing.assert_close(losses["loss"], losses["noise"] + 0.1 * losses["attn"]
                               + losses["id"])
    losses["id"].backward()
    grads = {n: p.grad for n, p in method.trainable_parameters().items()}
    for prefix in ("ppr.", "ip_kv.", "lora."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items()
                   if n.startswith(prefix)), prefix
    assert all(p.grad is None for p in method.id_encoder.parameters())  # frozen


def test_missing_id_loss_weights_fail_at_build_time(tmp_path):
    cfg = load_config(DEMO, ["method.id_loss_weight=0.5"]).method
    with pytest.raises(FaceModelMissing, match="method.id_loss_weights"):
        build_id_loss_encoder(cfg)
    cfg.id_loss_weights = str(tmp_path / "backbone.pth")
    with pytest.raises(FaceModelMissing, match="method.id_loss_weights.*not found"):
        build_id_loss_encoder(cfg)
    cfg.id_loss_weight = 0.0
    assert build_id_loss_encoder(cfg) is None
