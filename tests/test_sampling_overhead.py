"""benchmarks/sampling_overhead.py: ``--dtype`` (fp32 by default on the CPU, fp16 refused
there, bf16 run by both sides: they share the frozen modules, and the run checks the UNet's
input dtypes match), StoryMaker's pose (ours runs the ControlNet the baseline runs), and the
diffusers baseline denoising the tokens ours does at every step (tiny SeFi-IDE, whose keys
and values change with the stage) while paying its own text encoding, as a diffusers call
does, encoding as many text rows as ours; StoryMaker's against an IP-Adapter loaded by
diffusers from the method's own weights, both processor sets sharing the UNet)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmarks import sampling_baselines as baselines
from benchmarks import sampling_overhead as bench

PROMPT, SIZE, STEPS = "a photo of V*", (32, 32), 3
pytestmark = pytest.mark.usefixtures("one_thread")


def test_dtype_defaults_fp32_on_cpu_and_the_recipe_s_on_cuda() -> None:
    assert bench.weight_dtype("cpu", None) == "fp32"
    assert bench.weight_dtype("cpu", "bf16") == "bf16"
    assert bench.weight_dtype("cuda", None) is None
    assert bench.weight_dtype("cuda", "fp16") == "fp16"


def test_fp16_on_the_cpu_is_refused_with_the_reason(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--tiny", "--dtype", "fp16", "--methods", "storymaker"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no fp16 convolution kernels" in err and "--dtype bf16" in err


class Recorder(nn.Module):
    """A stand-in UNet, called as both pipelines call theirs."""

    def forward(self, sample, timestep, encoder_hidden_states):
        return sample


def test_a_unet_call_in_another_dtype_stops_the_run() -> None:
    unet, x, text = Recorder(), torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 8)
    dtypes = bench.unet_input_dtypes(unet)
    unet(x.bfloat16(), 0, encoder_hidden_states=text.bfloat16())
    unet(x.bfloat16(), 0, text.bfloat16())
    assert bench.one_dtype(dtypes) == "bfloat16"
    unet(x, 0, encoder_hidden_states=text)
    with pytest.raises(RuntimeError, match="differ"):
        bench.one_dtype(dtypes)


def test_tiny_storymaker_runs_both_sides_in_bf16(capsys) -> None:
    bench.main(["--tiny", "--methods", "storymaker", "--dtype", "bf16", "--pairs", "1",
                "--steps", "1", "--size", "32"])
    out = capsys.readouterr().out
    assert "in bfloat16" in out
    assert "RESULT sampling_overhead_storymaker_ratio=" in out


def test_storymaker_gets_a_pose_exactly_when_the_baseline_runs_its_controlnet() -> None:
    from ldm_ext.pipelines.instantfamily import InstantFamilyPipeline
    from ldm_ext.pipelines.storymaker import StoryMakerPipeline

    def pipe(cls, controlnet):
        made = object.__new__(cls)  # no method to build: pose reads only method.controlnet
        made.method = SimpleNamespace(controlnet=controlnet)
        return made

    people = bench.pose(pipe(StoryMakerPipeline, nn.Identity()), (64, 64))["people"]
    assert len(people) == 1
    assert bench.pose(pipe(StoryMakerPipeline, None), (64, 64)) == {}
    # InstantFamily's pipeline makes its own pose template
    assert bench.pose(pipe(InstantFamilyPipeline, nn.Identity()), (64, 64)) == {}


@pytest.fixture(scope="module")
def sefi():
    method = bench.build("sefi_ide", tiny=True, root=None, device="cpu", dtype="fp32")
    return method, method.pipeline(scheduler="ddim")


def test_baseline_replays_each_step_s_conditioning_and_encodes_as_many_rows(sefi):
    method, pipe = sefi
    seen = baselines.record(method, bench.ours_call(pipe, PROMPT, None, SIZE, STEPS))
    ours = seen.steps
    assert not any(baselines.same_step(a, b) for a, b in zip(ours, ours[1:]))  # stages differ
    assert seen.text_rows == 2 * STEPS + 1  # each visited stage's key and value row, negative
    call, _, _ = baselines.baseline(method, pipe.scheduler, PROMPT, SIZE, STEPS, seen)
    encoder = method.backbone.text_encoders[0]
    encoded = []
    handle = encoder.register_forward_hook(lambda _m, args, _o: encoded.append(args[0].shape))
    try:
        theirs = baselines.recorded_calls(method.unet, call)
    finally:
        handle.remove()
    assert [tuple(s) for s in encoded] == [(2 * STEPS, 77), (1, 77)]  # prompts, negative
    for step_theirs, step_ours in zip(theirs, ours, strict=True):  # keys and split values
        assert torch.equal(step_theirs["encoder_hidden_states"],
                           step_ours["encoder_hidden_states"])
        assert torch.equal(step_theirs["cross_attention_kwargs"]["ctx"].value_states,
                           step_ours["cross_attention_kwargs"]["ctx"].value_states)


def test_a_baseline_that_keeps_the_first_step_s_conditioning_is_refused(sefi, monkeypatch):
    method, pipe = sefi
    seen = baselines.record(method, bench.ours_call(pipe, PROMPT, None, SIZE, STEPS))
    monkeypatch.setattr(baselines, "step_swaps", lambda *_: {})
    with pytest.raises(RuntimeError, match="does not denoise the tokens ours does"):
        baselines.baseline(method, pipe.scheduler, PROMPT, SIZE, STEPS, seen)


def test_storymaker_s_baseline_loads_an_ip_adapter_of_its_weights_beside_ours() -> None:
    """diffusers' load_ip_adapter gets the method's resampler and image K / V; our
    processors, dtypes and weights are back after it, and each side runs its own set."""
    method = bench.build("storymaker", tiny=True, root=None, device="cpu", dtype="bf16")
    pipe, ids = method.pipeline(scheduler="ddim"), bench.identities("storymaker")
    ours_procs = dict(method.unet.attn_processors)
    params = {n: p.detach().clone() for n, p in method.unet.named_parameters()}
    assert {p.dtype for p in params.values()} == {torch.bfloat16, torch.float32}
    run_ours = bench.ours_call(pipe, PROMPT, ids, SIZE, 2)
    seen = baselines.record(method, run_ours)
    adapter = bench.ip_adapter("storymaker", method, ids)
    call, what, restore = baselines.baseline(method, pipe.scheduler, PROMPT, SIZE, 2, seen,
                                             adapter)
    assert "IP-Adapter Plus (16 image tokens)" in what
    encoded = []
    handle = method.image_encoder.register_forward_hook(
        lambda _m, args, _o: encoded.append(len(args[0])))
    try:
        theirs = baselines.recorded_calls(method.unet, call)
    finally:
        handle.remove()
    assert encoded == [1, 1]  # the image, then zeros (IP-Adapter Plus's negative)
    # (negative and image, one adapter, the tiny CLIP's 7² + 1 tokens, its width), given
    # to every UNet call, which projects them
    assert all(step["added_cond_kwargs"]["image_embeds"][0].shape == (2, 1, 50, 32)
               for step in theirs)
    ip_layer = next(p for p in method.unet.attn_processors.values() if hasattr(p, "to_k_ip"))
    ours_layer = next(p for p in ours_procs.values() if hasattr(p, "to_k_ip"))
    assert torch.equal(ip_layer.to_k_ip[0].weight.float(), ours_layer.to_k_ip.weight.float())

    restore()
    assert dict(method.unet.attn_processors) == ours_procs
    assert method.unet.encoder_hid_proj is None
    after = dict(method.unet.named_parameters())
    for name, value in params.items():  # load_ip_adapter's cast undone
        assert after[name].dtype == value.dtype and torch.equal(after[name], value), name
    assert [set(step) for step in baselines.recorded_calls(method.unet, run_ours)] == [
        set(step) for step in seen.steps]
