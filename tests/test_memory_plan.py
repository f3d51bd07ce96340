"""benchmarks/memory_plan.py and recipe_params.py: exact meta-device counts of a
non-InstantFamily recipe, an unmeasured recipe's total printed as a lower bound, and an SDXL
recipe's activations from its measured full-size step (a CPU upper bound)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from benchmarks import memory_plan, recipe_params
from ldm_ext.config import MethodConfig, load_config
from ldm_ext.methods.base import IdentityMethod
from ldm_ext.registry import METHODS, MethodSpec

ROOT = Path(__file__).resolve().parent.parent

SD15_UNET = 859_520_964  # SD1.5's published UNet
SD15_BLOCK_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280] + [1280] * 3 + [640] * 3 + [320] * 3


def test_storymaker_sd15_counts_match_closed_form() -> None:
    cfg = load_config(ROOT / "configs/experiment/storymaker_sd15.yaml")
    counts = recipe_params.recipe_counts(cfg)
    rank, text = 128, 768  # lora_rank; CLIP ViT-L token width (K_i / V_i input)
    # per transformer block of width C: LoRA on attn1 q/k/v/out (C -> C) and attn2 q/out
    # (C -> C), k/v (768 -> C); K_i / V_i: two bias-free 768 -> C projections
    lora = sum(rank * (12 * c + 2 * (text + c)) for c in SD15_BLOCK_WIDTHS)
    ip_kv = sum(2 * text * c for c in SD15_BLOCK_WIDTHS)
    assert counts["unet (trained)"] == (lora + ip_kv, True)  # LoRA and K_i / V_i
    assert counts["unet"] == (SD15_UNET, False)  # LoRA and K_i / V_i not counted frozen
    assert counts["controlnet"][1] is False and counts["image encoder"][1] is False
    assert counts["ppr"][1] is True
    assert {part for part, (_, trains) in counts.items() if trains} == {"unet (trained)", "ppr"}


def test_sdxl_recipe_total_is_a_lower_bound(capsys) -> None:
    cfg = load_config(ROOT / "configs/experiment/storymaker_sdxl_paper.yaml")
    counts = {"unet": (10**9, False), "ppr": (10**8, True)}
    assert not memory_plan.step_stands_for(cfg)
    memory_plan.print_recipe(cfg, "sdxl", counts, per_sample=None)
    out = capsys.readouterr().out
    assert "LOWER BOUND" in out and "total, at least" in out
    rows_printed = [line.split()[0] for line in out.splitlines() if line.endswith("GiB")]
    assert "frozen" in rows_printed  # the table printed, without SD1.5 activations in it
    assert not any(row.startswith("activations") for row in rows_printed)
    setup = memory_plan.recipe_setup(cfg)
    rows = memory_plan.static_bytes(counts, setup)
    assert rows["reduce buckets"] == 4 * 10**8  # DDP's fp32 gradient buckets, 8 GPUs


@dataclass
class ShiftConfig(MethodConfig):
    name: str = "shift"


class Shift(IdentityMethod):
    """A method recipe_params has never heard of: one trained map of the text tokens."""

    def __init__(self, cfg, backbone) -> None:
        super().__init__(cfg, backbone)
        self.text_shift = nn.Linear(768, 768)
        self.freeze_all_but_trainable()

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"text_shift": self.text_shift}


def test_any_registered_method_is_counted_from_its_own_module(tmp_path, monkeypatch) -> None:
    """No per-method plan: the registered module is built on the meta device from the
    published SD1.5 shapes, and its own trainable modules are what trains."""
    monkeypatch.setitem(METHODS, "shift", MethodSpec(ShiftConfig, Shift, "unused:Pipeline"))
    recipe = tmp_path / "shift.yaml"
    recipe.write_text("defaults: {model: sd15, data: single_image, trainer: cpu, "
                      "logger: default}\nname: shift\nmodel: {controlnet: null}\n"
                      "method: {name: shift}\n")
    counts = recipe_params.recipe_counts(load_config(recipe))
    assert counts["unet"] == (SD15_UNET, False) and counts["vae"][1] is False
    assert counts["text shift"] == (768 * 768 + 768, True)
    assert set(counts) == {"unet", "vae", "text encoders", "text shift"}


def test_sdxl_recipe_uses_its_measured_full_size_step(tmp_path, capsys) -> None:
    cfg = load_config(ROOT / "configs/experiment/sefi_ide_sdxl.yaml")  # 1024², fp16 frozen
    gib = memory_plan.GIB
    step = {"resolution": 256, "trainable": 10**7, "frozen": 3 * 10**9, "date": "d",
            "command": "c", "stages": {"train": {"peak_rss_gib": 7.0}}}
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"sefi_ide_sdxl": step}))
    assert memory_plan.full_size_step("configs/experiment/sefi_ide_sdxl.yaml", path) == step
    assert memory_plan.full_size_step("storymaker_sdxl_paper", path) is None
    static = 3 * 10**9 * 2 + 10**7 * 16  # fp16 frozen; fp32 weights, grads, AdamW
    per_sample = memory_plan.full_size_activations(cfg, step)
    assert per_sample == (7 * gib - static) * 16  # (1024 / 256)² the latent area
    swapped = {**step, "stages": {"train": {"peak_rss_gib": 7.0, "peak_swap_gib": 1.5}}}
    assert memory_plan.full_size_activations(cfg, swapped) == (8.5 * gib - static) * 16
    # the step's own forward + backward figure, when logged, less its fp32 gradients
    measured = {**swapped, "step_mem_gib": 1.25}
    assert memory_plan.full_size_activations(cfg, measured) == (1.25 * gib - 4 * 10**7) * 16
    memory_plan.print_recipe(cfg, "sefi_ide_sdxl", {"unet": (10**9, False)}, None, step)
    out = capsys.readouterr().out
    assert "CPU UPPER BOUND" in out and "total, CPU upper bound" in out
    assert "LOWER BOUND" not in out and "at least" not in out
    [row] = [line for line in out.splitlines() if line.strip().startswith("activations, CPU")]
    assert f"{per_sample / gib:.2f} GiB" in row  # batch 1 in the recipe


def test_an_upper_bound_over_the_gpu_leaves_the_fit_unknown(capsys) -> None:
    """Over 80 GiB, a planned total does not fit; a CPU upper bound says only that it is
    over (the GPU step may well fit)."""
    cfg = load_config(ROOT / "configs/experiment/sefi_ide_sdxl.yaml")
    setup, rows = memory_plan.recipe_setup(cfg), {"activations": 90 * memory_plan.GIB}
    memory_plan.print_plan(rows, setup, "planned")
    memory_plan.print_plan(rows, setup, "bounded", "CPU upper bound")
    planned, bounded = capsys.readouterr().out.split("bounded")
    assert "does NOT fit an A100" in planned
    assert "fit unknown, the upper bound is over" in bounded and "NOT" not in bounded
