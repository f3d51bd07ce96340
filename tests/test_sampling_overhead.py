"""benchmarks/sampling_overhead's diffusers baseline: it denoises the tokens ours does at
every step (tiny SeFi-IDE, whose keys and values change with the stage) and pays its own
text encoding, as a diffusers call does."""
from __future__ import annotations

import pytest
import torch

from benchmarks import sampling_overhead as bench

PROMPT, SIZE, STEPS = "a photo of V*", (32, 32), 3
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sefi():
    method = bench.build("sefi_ide", tiny=True, root=None, device="cpu")
    return method, method.pipeline(scheduler="ddim")


def test_baseline_replays_each_step_s_conditioning_and_encodes_its_prompt(sefi):
    method, pipe = sefi
    ours = bench.recorded_calls(method.unet, bench.ours_call(pipe, PROMPT, None, SIZE, STEPS))
    assert not any(bench.same_step(a, b) for a, b in zip(ours, ours[1:]))  # stages differ
    call, _ = bench.baseline(method, pipe, PROMPT, None, SIZE, STEPS)  # refuses a bad replay
    encoder = method.backbone.text_encoders[0]
    encoded = []
    handle = encoder.register_forward_hook(lambda _m, args, _o: encoded.append(args[0].shape))
    try:
        theirs = bench.recorded_calls(method.unet, call)
    finally:
        handle.remove()
    assert [tuple(s) for s in encoded] == [(1, 77), (1, 77)]  # prompt, then negative prompt
    for step_theirs, step_ours in zip(theirs, ours, strict=True):  # keys and split values
        assert torch.equal(step_theirs["encoder_hidden_states"],
                           step_ours["encoder_hidden_states"])
        assert torch.equal(step_theirs["cross_attention_kwargs"]["ctx"].value_states,
                           step_ours["cross_attention_kwargs"]["ctx"].value_states)


def test_a_baseline_that_keeps_the_first_step_s_conditioning_is_refused(sefi, monkeypatch):
    monkeypatch.setattr(bench, "step_swaps", lambda *_: {})
    with pytest.raises(RuntimeError, match="does not denoise the tokens ours does"):
        bench.baseline(*sefi, PROMPT, None, SIZE, STEPS)
