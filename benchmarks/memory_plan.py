"""Per-GPU memory of a training recipe, planned on paper and checked on the CPU.

    python -m benchmarks.memory_plan --config configs/experiment/instantfamily_sd15.yaml \\
        [--fit-widths 32 64] [--check-width 96] [--batch 2]

The plan adds, per GPU: frozen weights, trainable weights, gradients, optimizer state
(AdamW), reduce buckets and activations, and prints them against an 80 GiB A100.
Parameter counts are exact, from the recipe's models built on the meta device
(``recipe_params.py``: SD1.5 or SDXL backbone, ControlNet, encoders and the method's own
modules, split by what its ``trainable_modules()`` holds). Bytes per parameter follow the
trainer config:

  every strategy    frozen in model.weight_dtype, trainable fp32 with fp32 gradients
                    (mixed precision is autocast, also under DeepSpeed: ldm_ext/strategy.py)
  ddp / auto        AdamW's two fp32 moments (8 B), on every GPU; on more than one GPU
                    DDP's reducer also keeps its gradient buckets, an fp32 copy (4 B)
  deepspeed, ZeRO   fp32 master weights + two moments (12 B) sharded over the GPUs (stage
                    >= 1, or in CPU RAM with offload_optimizer), gradients sharded too at
                    stage 2; one reduce bucket of fp32 gradients

Activations (everything that grows with the batch: inputs, saved activations, attention
maps, allocator slack) cannot be counted on paper: they are measured per sample with
``controlnet_step.py``'s step (the one ``step_memory.py`` measures) at the recipe's
choices (bf16 autocast under mixed precision, fp16's bytes too; the frozen UNet in
model.weight_dtype, ``trainer.gradient_checkpointing``) at two reduced widths, less that
step's static bytes, and extrapolated linearly in width: feature maps grow with the
channel count, attention maps (8 heads at every level) do not. The VAE and face encoder
run without gradients before the UNet and are not in that peak. CPU kernels, not a GPU's:
fused attention on a GPU keeps fewer maps, so the activation row leans high there.

Every method's recipe is planned: its parameters, frozen and trainable apart, are counted
exactly by ``recipe_params.py``. The measured step is InstantFamily's; for PortraitBooth,
SeFi-IDE and StoryMaker on SD1.5 at 512² its activations per sample stand in for theirs
(same UNet, same latent size, gradients through the UNet; what differs is printed with
the table, ``ACTIVATION_NOTES``), an approximation, not a measurement of their step. For
SDXL recipes the activations come from the recipe's own full-size step on the CPU
(``fullsize_recipes.py``, figures in ``fullsize_recipes.json``): what that step's forward
and backward added to the process's memory (``perf/step_mem_gib``) less its fp32
gradients, per sample, scaled from its resolution to the recipe's by latent area. CPU kernels keep more than a GPU's fused
ones, so the row and the total are a CPU upper bound; no RESULT line (nothing is checked
against a second measurement). A recipe without a measured step keeps its static memory
only, printed as a lower bound.

Checked: the plan of the same step at ``--check-width`` (one process, as measured; past
both fit widths, so the width extrapolation is tested), at the recipe's precision choices,
over the measured CPU peak there, ending with
``RESULT memory_plan_error_ratio=<predicted/measured> goal<=1.15``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import controlnet_step, recipe_params
from ldm_ext.host_memory import MemoryPeak, rss_bytes

ROOT = Path(__file__).resolve().parent.parent

GOAL = 1.15
GIB = 2**30
A100_GIB = 80
SD15_WIDTH = 320
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
MEASURED_LATENT = 64  # step_memory's step: 64² latents, SD1.5's at 512²
FULL_SIZE = ROOT / "benchmarks" / "fullsize_recipes.json"  # fullsize_recipes.py writes it
# How the measured step (a trainable ControlNet into the frozen SD1.5 UNet) stands for each
# method's activations (benchmark-only table; the parameter counts are exact either way).
ACTIVATION_NOTES = {
    "instantfamily": "this recipe's own step",
    "portraitbooth": "reuses the step: same UNet pass with gradients through it; the "
                     "trained UNet saves what the ControlNet's did not, no ControlNet maps "
                     "(STEA, DIP's VAE decode and FaceNet pass not measured)",
    "sefi_ide": "reuses the step: gradients cross the frozen UNet into the text encoder "
                "(two prompts per image: text-encoder activations and the attention-loss "
                "maps not measured; no ControlNet maps)",
    "storymaker": "reuses the step: the decoupled image attention and LoRA add maps, the "
                  "frozen pose ControlNet keeps none (its residuals only); not measured",
}


@dataclass
class Setup:
    """Bytes per parameter and sharding of one training setup."""

    gpus: int
    zero_stage: int  # 0: no ZeRO (ddp / auto)
    offload_optimizer: bool
    frozen_bytes: int  # per frozen parameter
    module_bytes: int  # per trainable parameter, the module's copy
    grad_bytes: int
    optimizer_bytes: int  # AdamW state per trainable parameter
    bucket_bytes: int  # DeepSpeed's reduce bucket
    bucket_bytes_per_param: int = 0  # DDP's gradient buckets, per trainable parameter


def recipe_setup(cfg) -> Setup:
    """The setup a trainer config trains with on ``devices x num_nodes`` GPUs."""
    t = cfg.trainer
    gpus, frozen = t.devices * t.num_nodes, DTYPE_BYTES[cfg.model.weight_dtype]
    if t.strategy != "deepspeed":  # DDP (by name: no gradient_as_bucket_view) copies grads
        return Setup(gpus, 0, False, frozen, 4, 4, 8, 0, 4 if gpus > 1 else 0)
    return Setup(gpus, t.zero_stage, t.offload_optimizer, frozen, 4, 4, 12, t.bucket_size * 4)


def check_setup(cfg) -> Setup:
    """The single-process step measured on the CPU: frozen UNet in model.weight_dtype,
    trainable fp32 with fp32 gradients and AdamW moments."""
    return Setup(1, 0, False, DTYPE_BYTES[cfg.model.weight_dtype], 4, 4, 8, 0)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def step_counts(width: int) -> dict[str, tuple[int, bool]]:
    """Module -> (parameters, trainable) of ``step_memory``'s step at UNet ``width`` (meta
    device, no memory): the frozen UNet and the trainable ControlNet."""
    with torch.device("meta"):
        unet, controlnet = controlnet_step.build_models(width, "meta")
    return {"unet": (count(unet), False), "controlnet": (count(controlnet), True)}


def static_bytes(counts: dict[str, tuple[int, bool]], setup: Setup) -> dict[str, float]:
    """Per-GPU bytes of everything but activations."""
    frozen = sum(n for n, trains in counts.values() if not trains)
    trainable = sum(n for n, trains in counts.values() if trains)
    grad_shards = setup.gpus if setup.zero_stage >= 2 else 1
    optimizer_shards = setup.gpus if setup.zero_stage >= 1 else 1
    optimizer = 0 if setup.offload_optimizer else trainable * setup.optimizer_bytes
    return {"frozen weights": frozen * setup.frozen_bytes,
            "trainable weights": trainable * setup.module_bytes,
            "gradients": trainable * setup.grad_bytes / grad_shards,
            "optimizer state": optimizer / optimizer_shards,
            "reduce buckets": setup.bucket_bytes + trainable * setup.bucket_bytes_per_param}


def measure(cfg, width: int, batch: int) -> float:
    """Peak bytes of ``step_memory``'s step at the recipe's choices (fresh process)."""
    cmd = [sys.executable, "-m", "benchmarks.memory_plan", "--child", str(width), "--batch", str(batch),
           "--frozen-dtype", cfg.model.weight_dtype, "--autocast", str(int(mixed(cfg))),
           "--checkpointing", str(int(cfg.trainer.gradient_checkpointing))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(controlnet_step.MMAP_THRESHOLD)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def mixed(cfg) -> bool:
    return cfg.trainer.precision.endswith("-mixed")


def child(width: int, batch: int, frozen_dtype: str, autocast: bool,
          checkpointing: bool) -> dict:
    """One measured step, as ``step_memory.child`` with dtype, autocast and checkpointing
    set apart."""
    runtime = rss_bytes()
    unet, controlnet = controlnet_step.build_models(width, "cpu")
    unet.requires_grad_(False).eval()
    unet.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[frozen_dtype])
    if checkpointing:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    optimizer = controlnet_step.allocated_adamw(controlnet)
    inputs = controlnet_step.step_inputs(batch, "cpu")
    with MemoryPeak(rss_bytes, interval=0.005) as rss:
        controlnet_step.train_step(unet, controlnet, optimizer, inputs, autocast, "cpu")
    return {"peak_bytes": rss.peak - runtime}


def activation_line(cfg, widths: list[int], batch: int) -> tuple[float, float]:
    """(a, b): activation bytes per sample = a + b * width, from the measured peaks at two
    widths less the step's static bytes there."""
    per_sample = []
    for width in widths:
        static = sum(static_bytes(step_counts(width), check_setup(cfg)).values())
        per_sample.append((measure(cfg, width, batch) - static) / batch)
        print(f"  width {width}: activations {per_sample[-1] / GIB:.3f} GiB per sample")
    (w0, w1), (y0, y1) = widths, per_sample
    slope = (y1 - y0) / (w1 - w0)
    return y0 - slope * w0, slope


def print_plan(rows: dict[str, float], setup: Setup, title: str,
               bound: str | None = None) -> float:
    """A table of per-GPU GiB and the total against an 80 GiB A100; returns the total.
    Without an activations row the total is a lower bound: whether it fits is unknown;
    ``bound`` names what the total is otherwise (e.g. a CPU upper bound)."""
    total = sum(rows.values())
    zero = f"ZeRO-{setup.zero_stage}" if setup.zero_stage else "no ZeRO"
    offload = ", optimizer offloaded to CPU" if setup.offload_optimizer else ""
    print(f"{title} ({setup.gpus} GPU(s), {zero}{offload})")
    for name, value in rows.items():
        print(f"  {name:<20}{value / GIB:>9.2f} GiB")
    planned = any(name.startswith("activations") for name in rows)
    fits = "fits" if planned else "fit unknown, without activations, on"
    label = f"total, {bound}" if bound else "total" if planned else "total, at least"
    over = "fit unknown, the upper bound is over," if bound and "upper" in bound else \
        "does NOT fit"
    print(f"  {label:<20}{total / GIB:>9.2f} GiB of {A100_GIB} "
          f"({fits if total < A100_GIB * GIB else over} an A100 80GB)")
    return total


def step_stands_for(cfg) -> bool:
    """Whether the measured SD1.5 step at 64² latents stands for the recipe's UNet pass."""
    return cfg.model.family == "sd15" and cfg.data.resolution // 8 == MEASURED_LATENT


def full_size_step(name: str, path: Path = FULL_SIZE) -> dict | None:
    """The figures ``fullsize_recipes.py`` measured for recipe ``name`` (its experiment
    file's stem) in the JSON file ``path``, or None."""
    measured = json.loads(path.read_text()) if path.is_file() else {}
    return measured.get(Path(name).stem)


def full_size_activations(cfg, step: dict) -> float:
    """Activation bytes per sample at ``cfg``'s resolution from a measured full-size step,
    scaled by latent area (``step['resolution']`` -> ``cfg.data.resolution``): what its
    forward and backward added (``step_mem_gib``, ``perf/step_mem_gib``) less the fp32
    gradients of its trainable parameters, which the plan counts apart. A step measured
    before that figure was logged falls back to its training peak RSS and swap less the
    static bytes of its exact counts, which also holds loading and the optimizer's update."""
    setup = check_setup(cfg)
    scale = (cfg.data.resolution / step["resolution"]) ** 2
    if step.get("step_mem_gib"):
        return max(0.0, step["step_mem_gib"] * GIB - step["trainable"] * setup.grad_bytes) * scale
    static = step["frozen"] * setup.frozen_bytes + step["trainable"] * (
        setup.module_bytes + setup.grad_bytes + setup.optimizer_bytes)
    train = step["stages"]["train"]
    peak = (train["peak_rss_gib"] + train.get("peak_swap_gib", 0.0)) * GIB  # swap: RAM too
    return (peak - static) * scale


def print_recipe(cfg, name: str, counts: dict[str, tuple[int, bool]],
                 per_sample: float | None, full_size: dict | None = None) -> None:
    """The recipe's plan: parameters by part, then per-GPU bytes; activations from the
    measured SD1.5 step (``per_sample`` bytes at width 320) where ``step_stands_for`` the
    recipe, else from the recipe's measured ``full_size`` step (a CPU upper bound), else
    left out and the total marked a lower bound."""
    print(f"{name}: parameters (exact, meta device)")
    for part, (n, trains) in counts.items():
        print(f"  {part:<22}{n / 1e6:>10.2f} M  {'trainable' if trains else 'frozen'}")
    batch, setup = cfg.data.batch_size, recipe_setup(cfg)
    rows = static_bytes(counts, setup)
    latent = cfg.data.resolution // 8
    bound = None
    if per_sample is not None:
        own = cfg.method.name == "instantfamily"
        rows["activations" if own else "activations, reused"] = per_sample * batch
        note = ACTIVATION_NOTES[cfg.method.name]
    elif full_size is not None:
        rows["activations, CPU"] = full_size_activations(cfg, full_size) * batch
        bound = "CPU upper bound"
        note = (f"this recipe's full-size step on the CPU ({full_size['resolution']}², batch "
                f"1, {full_size['date']}: {full_size['command']}), scaled to {latent}² "
                "latents by area; CPU kernels keep more than a GPU's: a CPU UPPER BOUND")
    else:
        note = (f"NOT planned: the measured step is SD1.5-shaped at {MEASURED_LATENT}² "
                f"latents, this recipe runs {cfg.model.family} at {latent}²; the total is a "
                "LOWER BOUND (an SDXL step needs measuring on a GPU)")
    print(f"  activations: {note}")
    print_plan(rows, setup, f"{name}: {cfg.model.family}, {cfg.data.resolution}², batch "
               f"{batch} per GPU", bound)


def main() -> None:
    from ldm_ext.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/experiment/instantfamily_sd15.yaml")
    parser.add_argument("--fit-widths", type=int, nargs=2, default=[32, 64],
                        help="two UNet widths (multiples of 32, GroupNorm's groups)")
    parser.add_argument("--check-width", type=int, default=96)
    parser.add_argument("--batch", type=int, default=2, help="images per measured step")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frozen-dtype", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--autocast", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    widths = [*args.fit_widths, args.check_width]
    if any(w % 32 for w in widths) or len(set(args.fit_widths)) < 2:
        parser.error(f"widths {widths}: two different fit widths, all multiples of 32")
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.frozen_dtype, bool(args.autocast),
                               bool(args.checkpointing))))
        return
    cfg = load_config(args.config)
    try:
        counts = recipe_params.recipe_counts(cfg)
    except ValueError as err:
        parser.error(f"{args.config}: {err}")
    if not step_stands_for(cfg):  # no second measurement: no ratio to report
        print_recipe(cfg, args.config, counts, None, full_size_step(args.config))
        print("no RESULT: this recipe's step is not the measured one (run an SD1.5 recipe "
              "for the check)")
        return
    print(f"activations measured on the CPU, batch {args.batch} (16-bit autocast: "
          f"{mixed(cfg)}, frozen UNet {cfg.model.weight_dtype}, gradient checkpointing: "
          f"{cfg.trainer.gradient_checkpointing})")
    a, b = activation_line(cfg, args.fit_widths, args.batch)
    print_recipe(cfg, args.config, counts, a + b * SD15_WIDTH)
    check = static_bytes(step_counts(args.check_width), check_setup(cfg))
    check["activations"] = (a + b * args.check_width) * args.batch
    predicted = print_plan(check, check_setup(cfg), f"check: step_memory's step at width "
                           f"{args.check_width}, batch {args.batch}, predicted")
    measured = measure(cfg, args.check_width, args.batch)
    print(f"  measured CPU peak {measured / GIB:.2f} GiB")
    print(f"RESULT memory_plan_error_ratio={predicted / measured:.3f} goal<={GOAL}")


if __name__ == "__main__":
    main()
