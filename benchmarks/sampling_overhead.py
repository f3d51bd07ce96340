"""Each method's sampling pipeline against the diffusers pipeline doing the same denoising
work on the same weights.

    python -m benchmarks.sampling_overhead [--device cpu|cuda] [--tiny | --fullsize DIR]
        [--methods instantfamily portraitbooth sefi_ide storymaker] [--pairs 9] [--steps 4]
        [--size 512] [--threads 1]

The method is built from its recipe (``--tiny``: the demo configs on the tiny backbones;
otherwise the full-size recipes on the random folders ``python -m ldm_ext.fullsize DIR``
writes, built there if missing). Our pipeline runs once to record what its UNet is given at
every step and how many rows its text encoder encodes; the diffusers pipeline then runs on
the same UNet, VAE, text encoders, scheduler config and steps (``sampling_baselines.py``):
it encodes as many text rows with its own ``encode_prompt`` (a diffusers call of the same
conditioning would: its prompt and negative prompt, and for SeFi-IDE's per-stage tokens a
prompt per visited stage and role), then denoises with our recorded rows and attention
context, step by step where ours changes them (checked once before timing). The identity
work that has no diffusers counterpart (face encoders, STEA's fusion, masks) is our side's
only extra work, as it is at real use. The baselines:

  instantfamily  ``StableDiffusionControlNetPipeline`` with the method's ControlNet and a
                 pose image of the same size.
  storymaker     ``StableDiffusionXLControlNetPipeline`` when the recipe has a pose
                 ControlNet (ours then gets a one-person pose template, so both sides run
                 it), else ``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline``, with
                 an IP-Adapter Plus that diffusers' ``load_ip_adapter`` loads from the
                 method's own character resampler and image K / V (its released layout)
                 and the CLIP image encoder: it encodes the character crop and zeros, runs
                 the resampler inside every UNet call and diffusers' IP-Adapter attention.
                 Both processor sets share the UNet and are swapped before each call; ours
                 adds the ArcFace and face tokens, background tokens and our attention.
  portraitbooth, sefi_ide  ``StableDiffusion(XL)Pipeline`` with their conditioning.

``--dtype fp32|bf16|fp16`` sets ``model.weight_dtype``, the frozen weights' dtype, for both
sides (they share the modules; the run stops if the UNet's latents or encoder states differ
in dtype between them): default fp32 on the CPU and the recipe's own on CUDA. bf16 suits a
CPU with bf16 matmul kernels (AVX512-BF16 / AMX: ``lscpu``), where it halves the memory of
the full-size recipes; fp16 is refused on the CPU (it has no fp16 convolution kernels).

A pair is one image from each side (who goes first alternates); a method's figure is the
median of its per-pair ratios (ours / diffusers seconds, ``benchmarks/timing.py``: CUDA
wall clock synchronised, CPU process time with ``--threads`` (default 1) intra-op threads,
as ``attention_overhead.py`` measures: on a shared 2-core machine a second thread spins
at every parallel region whose partner lost its core, billing CPU time that is neither
side's work and moved single figures by ±8 %; glibc is told to keep freed memory, so
timed calls do not page-fault, ``timing.keep_freed_memory``). Prints per method
``RESULT sampling_overhead_<method>_ratio=<x> goal<=1.03`` and the diffusers side's it/s.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from benchmarks.sampling_baselines import IPAdapter, baseline, record
from benchmarks.timing import keep_freed_memory, timed

ROOT = Path(__file__).resolve().parent.parent

GOAL = 1.03
# diffusers' IP-Adapter Plus loader builds a resampler of 4 blocks with heads of 64 (its
# query width // 64), as released: the tiny StoryMaker's gets those (one head)
TINY_OVERRIDES = {"storymaker": ["method.resampler_depth=4", "method.resampler_heads=1",
                                 "method.resampler_dim_head=64"]}
EXPERIMENTS = ROOT / "configs" / "experiment"
# method -> (tiny recipe, full-size recipe, prompt)
RECIPES = {
    "instantfamily": ("demo", "instantfamily_sd15", "a photo of two people"),
    "portraitbooth": ("portraitbooth_demo", "portraitbooth_sd15", "a photo of a person"),
    "sefi_ide": ("sefi_ide_tiny", "sefi_ide_sd15", "a photo of V*"),
    "storymaker": ("storymaker_demo", "storymaker_sdxl_paper", "a photo of a person"),
}


def fullsize_overrides(method: str, family: str, root: Path) -> list[str]:
    """The recipe's Hub names replaced by the random full-size folders (written once)."""
    from ldm_ext import fullsize

    face = {"instantfamily": "facenet", "portraitbooth": "facenet",
            "storymaker": "iresnet100"}.get(method)
    paths = fullsize.write(root, family, with_controlnet=method in ("instantfamily",
                                                                      "storymaker"),
                           with_image_encoder=method == "storymaker", face_encoder=face)
    overrides = [f"model.pretrained={paths['model.pretrained']}"]
    if method == "storymaker":
        overrides += [f"model.controlnet={paths['model.controlnet']}",
                      f"method.image_encoder={paths['method.image_encoder']}",
                      "method.face_encoder=arcface", "method.face_arch=r100",
                      f"method.face_weights={paths['method.face_weights']}",
                      # the IP-Adapter initialisations have no offline stand-in: random PPR
                      "method.faceid_weights=null", "method.plus_weights=null"]
    elif face:
        overrides.append(f"method.face_weights={paths['method.face_weights']}")
    return overrides


def weight_dtype(device: str, asked: str | None) -> str | None:
    """The ``model.weight_dtype`` to run (None: the recipe's own); fp32 by default on the
    CPU. Raises ValueError for fp16 on the CPU: it has no fp16 convolution kernels."""
    if device == "cuda":
        return asked
    if asked == "fp16":
        raise ValueError("--dtype fp16 on the CPU: a CPU has no fp16 convolution kernels (its "
                         "fp16 path is orders of magnitude slower); use --dtype bf16 on a CPU "
                         "with bf16 kernels (lscpu: avx512_bf16 / amx_bf16) or fp32")
    return asked or "fp32"


def build(method: str, tiny: bool, root: Path | None, device: str, dtype: str | None):
    """The method of its tiny or full-size recipe, frozen weights in ``dtype`` (None: the
    recipe's), on ``device`` in eval mode."""
    from ldm_ext.config import load_config
    from ldm_ext.methods.loading import build_method

    tiny_name, full_name, _ = RECIPES[method]
    path = EXPERIMENTS / f"{tiny_name if tiny else full_name}.yaml"
    family = load_config(path).model.family
    overrides = TINY_OVERRIDES.get(method, []) if tiny else fullsize_overrides(method, family,
                                                                               root)
    if dtype:
        overrides.append(f"model.weight_dtype={dtype}")
    return build_method(load_config(path, overrides)).to(device).eval()


def pose(pipe, size: tuple[int, int]) -> dict:
    """Our pipeline's pose input where the baseline runs the method's ControlNet and ours
    runs it only when given a pose (StoryMaker's); else nothing."""
    from ldm_ext.pipelines.storymaker import StoryMakerPipeline

    if not isinstance(pipe, StoryMakerPipeline) or pipe.method.controlnet is None:
        return {}
    from ldm_ext.perception.pose import pose_template

    return {"people": pose_template(1, size)}


def unet_input_dtypes(unet: torch.nn.Module) -> set:
    """A set that collects, from now on, the (latents, encoder states) dtypes of every call
    of ``unet`` (ours and the baseline's alike)."""
    seen: set = set()

    def hook(_, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        seen.add((sample.dtype, getattr(states, "dtype", None)))

    unet.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def one_dtype(seen: set) -> str:
    """The latents' dtype of ``unet_input_dtypes``' calls, e.g. "bfloat16"; RuntimeError
    when the calls differ (one side ran in another dtype)."""
    if len(seen) != 1:
        raise RuntimeError(f"the UNet's (latents, encoder states) dtypes differ between "
                           f"the calls: {sorted(map(str, seen))}")
    return str(next(iter(seen))[0]).removeprefix("torch.")


def identities(method: str):
    """Random reference inputs of the pipeline's identity layout (one or two subjects)."""
    gen = torch.Generator().manual_seed(0)
    if method == "instantfamily":
        return torch.rand(2, 3, 160, 160, generator=gen) * 2 - 1
    if method == "portraitbooth":
        return torch.rand(1, 3, 160, 160, generator=gen) * 2 - 1
    if method == "storymaker":
        return torch.rand(1, 6, 224, 224, generator=gen) * 2 - 1
    return None


def ours_call(pipe, prompt, ids, size, steps):
    extra = pose(pipe, size)
    return lambda: pipe(prompt, ids, size=size, steps=steps, guidance=7.5,
                        generator=torch.Generator().manual_seed(0), progress=False, **extra)


def ip_adapter(method_name: str, method, ids) -> IPAdapter | None:
    """The IP-Adapter the baseline loads where ours runs decoupled image attention
    (StoryMaker): the method's own character resampler and image K / V in IP-Adapter
    Plus's released layout, its CLIP image encoder and the character crop as the image."""
    if method_name != "storymaker":
        return None
    from PIL import Image

    from ldm_ext.adapters.released import ip_adapter_plus_targets

    targets = ip_adapter_plus_targets(method.ppr.character, method.unet)
    state = {section: {k: p.detach() for k, p in params.items()}
             for section, params in targets.items()}
    character = ((ids[0, 3:] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return IPAdapter(state, method.image_encoder, Image.fromarray(character))


def measure(method_name: str, args) -> float:
    method = build(method_name, args.tiny, args.fullsize, args.device, args.dtype)
    dtypes = unet_input_dtypes(method.unet)
    pipe, prompt = method.pipeline(scheduler="ddim"), RECIPES[method_name][2]
    ids, size = identities(method_name), (args.size, args.size)
    run_ours = ours_call(pipe, prompt, ids, size, args.steps)
    seen = record(method, run_ours)
    theirs, what, restore = baseline(method, pipe.scheduler, prompt, size, args.steps, seen,
                                     ip_adapter(method_name, method, ids))  # warmed up
    ours = lambda: (restore(), run_ours())  # noqa: E731 (our processors back in place)
    ratios, base_seconds = [], []
    for pair in range(args.pairs):
        first, second = (ours, theirs) if pair % 2 == 0 else (theirs, ours)
        a, b = timed(first, args.device), timed(second, args.device)
        ours_s, base_s = (a, b) if pair % 2 == 0 else (b, a)
        ratios.append(ours_s / base_s)
        base_seconds.append(base_s)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios * 3)
    ratio = statistics.median(ratios)
    print(f"{method_name}: vs {what}, {args.steps} steps at {args.size}² in "
          f"{one_dtype(dtypes)}, quartiles "
          f"{q1:.3f}-{q3:.3f}, diffusers {args.steps / statistics.median(base_seconds):.2f} "
          f"it/s, ours {args.steps / statistics.median(base_seconds) / ratio:.2f} it/s")
    print("  per pair (ours first, then theirs first, alternating): "
          + " ".join(f"{r:.3f}" for r in ratios))
    print(f"RESULT sampling_overhead_{method_name}_ratio={ratio:.3f} goal<={GOAL}", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--tiny", action="store_true", help="tiny backbones (CPU check)")
    parser.add_argument("--fullsize", type=Path, default=ROOT / "gpu_out" / "fullsize",
                        help="folder of ldm_ext.fullsize's random backbones (written if "
                        "missing)")
    parser.add_argument("--methods", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="frozen weights' dtype, both sides (default: fp32 on the CPU, "
                        "the recipe's on CUDA; fp16 is refused on the CPU)")
    parser.add_argument("--size", type=int, default=None, help="default: 64 tiny, 512 full")
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch intra-op threads")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 512)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        keep_freed_memory()
    try:
        args.dtype = weight_dtype(args.device, args.dtype)
    except ValueError as err:
        parser.error(str(err))
    for name in args.methods:
        measure(name, args)


if __name__ == "__main__":
    main()
