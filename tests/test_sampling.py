"""Shared sampling and training helpers: schedulers by name, chained guidance, per-image
generators, the lr schedule, the generic noising step, SDXL conditioning, identity guidance."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ldm_ext.config import SAMPLERS, ConfigError, load_config
from ldm_ext.methods.schedule import lr_factor
from ldm_ext.pipelines.sampling import guide, image_generator, inference_scheduler


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_builds_from_the_training_scheduler(name):
    train = DDPMScheduler(prediction_type="v_prediction")
    scheduler = inference_scheduler(train, name)
    assert scheduler.config.prediction_type == "v_prediction"
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) == 4


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="known"):
        inference_scheduler(DDPMScheduler(), "heun")
    with pytest.raises(ConfigError, match="method.sampler"):
        load_config("configs/experiment/demo.yaml", ["method.sampler=heun"])


def test_guide_is_cfg_for_two_branches_and_chains_for_three():
    u, f, c = torch.full((1, 2), 1.0), torch.full((1, 2), 3.0), torch.full((1, 2), 4.0)
    torch.testing.assert_close(guide(torch.cat([u, c]), [7.5]), u + 7.5 * (c - u))
    torch.testing.assert_close(guide(torch.cat([u, f, c]), [2.0, 5.0]),
                               u + 2.0 * (f - u) + 5.0 * (c - f))


def test_image_generators_are_independent_of_order():
    a = torch.randn(3, generator=image_generator(42, 5))
    torch.randn(100, generator=image_generator(42, 4))
    torch.testing.assert_close(torch.randn(3, generator=image_generator(42, 5)), a)
    assert not torch.equal(a, torch.randn(3, generator=image_generator(42, 6)))
    assert not torch.equal(a, torch.randn(3, generator=image_generator(43, 5)))


def test_lr_schedule_warmup_constant_and_steps():
    assert [lr_factor(s, "constant", [], 0.1, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1, 1]
    steps = [lr_factor(s, "step", [2, 4], 0.5, 0) for s in range(6)]
    assert steps == [1, 1, 0.5, 0.5, 0.25, 0.25]


@pytest.fixture(scope="module")
def method():
    from ldm_ext.methods.loading import build_method

    return build_method(load_config("configs/experiment/demo.yaml"))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_noised_latents_targets_and_offset(method, kind, monkeypatch):
    scheduler = DDPMScheduler(prediction_type=kind)
    monkeypatch.setattr(method.backbone, "scheduler", scheduler)
    latents = torch.randn(2, 4, 8, 8)
    noisy, t, target = method.noised_latents(latents, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=g)
    torch.testing.assert_close(noisy, scheduler.add_noise(latents, noise, t))
    expected = noise if kind == "epsilon" else scheduler.get_velocity(latents, noise, t)
    torch.testing.assert_close(target, expected)
    monkeypatch.setitem(method.cfg.method, "noise_offset", 0.1)
    _, _, offset_target = method.noised_latents(latents, torch.Generator().manual_seed(0))
    if kind == "epsilon":  # the offset is constant per (sample, channel)
        shift = offset_target - noise
        assert shift.abs().max() > 0
        torch.testing.assert_close(shift, shift[..., :1, :1].expand_as(shift))


def test_sdxl_added_conditioning_only_for_sdxl(method, monkeypatch):
    pooled = torch.randn(2, 16)
    assert method.added_cond_kwargs(pooled, (64, 96)) is None
    monkeypatch.setattr(method.backbone, "family", "sdxl")
    added = method.added_cond_kwargs(pooled, (64, 96))
    assert added["text_embeds"] is pooled
    assert added["time_ids"].tolist() == [[64, 96, 0, 0, 64, 96]] * 2


def test_identity_guidance_branches(method, monkeypatch):
    pipe = method.pipeline()
    crops = torch.rand(2, 3, 160, 160) * 2 - 1
    monkeypatch.setitem(method.cfg.method, "identity_guidance", False)  # the demo turns it on

    def sample():
        return pipe("p", crops, size=(64, 64), steps=2, guidance=3.0,
                    generator=torch.Generator().manual_seed(0), progress=False).tobytes()

    plain = sample()
    prompts, valid, scales = pipe.branches("p", "n", 2, 7.5)
    assert prompts == ["n", "p"] and valid.all() and scales == [7.5]  # the paper's CFG
    monkeypatch.setitem(method.cfg.method, "identity_guidance", True)
    prompts, valid, scales = pipe.branches("p", "n", 2, 7.5)
    assert prompts == ["n", "p"] and valid.tolist() == [[False, False], [True, True]]
    assert sample() != plain  # the unconditional branch lost its faces
    monkeypatch.setitem(method.cfg.method, "identity_scale", 2.0)
    prompts, valid, scales = pipe.branches("p", "n", 2, 7.5)
    assert prompts == ["n", "n", "p"] and scales == [2.0, 7.5]
    assert valid.tolist() == [[False, False], [True, True], [True, True]]
    assert sample() != plain
