"""benchmarks/sampling_overhead.py's ``--dtype`` (fp32 by default on the CPU, fp16 refused
there, bf16 run by both sides: they share the frozen modules, and the run checks the UNet's
input dtypes match) and StoryMaker's pose (ours runs the ControlNet the baseline runs)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmarks import sampling_overhead as bench


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
