"""Each method's sampling pipeline against the diffusers pipeline doing the same denoising
work on the same weights.

    python -m benchmarks.sampling_overhead [--device cpu|cuda] [--tiny | --fullsize DIR]
        [--methods instantfamily portraitbooth sefi_ide storymaker] [--pairs 9] [--steps 4]
        [--size 512] [--threads 1]

The method is built from its recipe (``--tiny``: the demo configs on the tiny backbones;
otherwise the full-size recipes on the random folders ``python -m ldm_ext.fullsize DIR``
writes, built there if missing). Our pipeline runs once to record what its UNet is given at
every step (``encoder_hidden_states`` with every identity token, ``added_cond_kwargs``,
``cross_attention_kwargs``); the diffusers pipeline then runs on the same UNet (our
processors installed), VAE, scheduler config and steps, with ``prompt_embeds`` /
``negative_prompt_embeds`` set to the first step's recorded rows (and SDXL's pooled
embeddings) and, where ours changes them from step to step (SeFi-IDE's per-stage keys and
values), each next step's swapped in by ``callback_on_step_end``, so both sides denoise the
same tokens (checked once before timing). A diffusers call encodes its prompt and negative
prompt (``encode_prompt``) before the recorded rows take their place, as ours encodes its
own: the identity encoders (face, CLIP, the identity tokens' text rows) are our side's
only extra work, as they are at real use. The baselines:

  instantfamily  ``StableDiffusionControlNetPipeline`` with the method's ControlNet and a
                 pose image of the same size.
  storymaker     ``StableDiffusionXLControlNetPipeline`` when the recipe has a pose
                 ControlNet (ours then gets a one-person pose template, so both sides run
                 it), else ``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline``,
                 with the same UNet and its decoupled (IP-Adapter-like) processors: the
                 image tokens reach them through the recorded ``cross_attention_kwargs``.
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
import inspect
import statistics
from pathlib import Path

import torch

from benchmarks.timing import keep_freed_memory, timed

ROOT = Path(__file__).resolve().parent.parent

GOAL = 1.03
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
    overrides = [] if tiny else fullsize_overrides(method, family, root)
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


def recorded_calls(module: torch.nn.Module, run) -> list[dict]:
    """The arguments, by name, of each forward of ``module`` during ``run()`` (a dict
    argument as it was then: a caller may change it between calls)."""
    calls: list[dict] = []
    signature = inspect.signature(module.forward)

    def hook(_, args, kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        calls.append({k: dict(v) if isinstance(v, dict) else v for k, v in bound.items()})

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return calls


def ours_call(pipe, prompt, ids, size, steps):
    extra = pose(pipe, size)
    return lambda: pipe(prompt, ids, size=size, steps=steps, guidance=7.5,
                        generator=torch.Generator().manual_seed(0), progress=False, **extra)


def baseline(method, ours_pipe, prompt, ids, size, steps):
    """(callable, description) of the diffusers pipeline on the same weights and tokens."""
    import diffusers

    steps_seen = recorded_calls(method.unet, ours_call(ours_pipe, prompt, ids, size, steps))
    if len(steps_seen) != steps:
        raise RuntimeError(f"our pipeline called the UNet {len(steps_seen)} times in {steps} "
                           "steps; the baseline replays one call per step")
    seen = steps_seen[0]
    hidden = seen["encoder_hidden_states"]  # (2B, L, D): negative rows, then conditional
    half = hidden.shape[0] // 2
    kwargs = dict(prompt_embeds=hidden[half:], negative_prompt_embeds=hidden[:half])
    sdxl = method.backbone.family == "sdxl"
    parts = dict(vae=method.vae, unet=method.unet, scheduler=ours_pipe.scheduler,
                 tokenizer=method.backbone.tokenizers[0],
                 text_encoder=method.backbone.text_encoders[0])
    if sdxl:
        pooled = seen["added_cond_kwargs"]["text_embeds"]
        kwargs.update(pooled_prompt_embeds=pooled[half:],
                      negative_pooled_prompt_embeds=pooled[:half])
        parts.update(text_encoder_2=method.backbone.text_encoders[1],
                     tokenizer_2=method.backbone.tokenizers[1])
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    controlnet = getattr(method, "controlnet", None)
    name = ("StableDiffusionXL" if sdxl else "StableDiffusion") + (
        "ControlNet" if controlnet is not None else "") + "Pipeline"
    if controlnet is not None:
        parts["controlnet"] = controlnet
        kwargs["image"] = torch.zeros(1, 3, *size)
    pipe = getattr(diffusers, name)(**parts)
    if sdxl:
        pipe.watermark = None
    pipe.set_progress_bar_config(disable=True)
    text = dict(prompt=prompt, negative_prompt="", device=method.device,
                num_images_per_prompt=1, do_classifier_free_guidance=True)

    def call():
        pipe.encode_prompt(**text)  # a diffusers call's own text encoding, then replaced
        attention = dict(seen.get("cross_attention_kwargs") or {})  # the steps' own, swapped
        return pipe(height=size[0], width=size[1], num_inference_steps=steps,
                    guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                    output_type="pil", cross_attention_kwargs=attention or None,
                    **kwargs, **step_swaps(steps_seen, attention, sdxl))

    check_replay(method.unet, call, steps_seen)
    return call, f"{name} ({2 * half} rows x {hidden.shape[1]} keys)"


def step_swaps(steps_seen: list[dict], attention: dict, sdxl: bool) -> dict:
    """diffusers call arguments that give step i + 1 what our UNet got at step i + 1 where
    that changed: its text rows (and SDXL pooled rows) through ``callback_on_step_end``,
    its attention context into ``attention`` (the call's ``cross_attention_kwargs``)."""
    if all(same_step(s, steps_seen[0]) for s in steps_seen[1:]):
        return {}  # the first step's arguments serve every step
    names = ["prompt_embeds"] + (["add_text_embeds"] if sdxl else [])

    def next_step(_pipe, i: int, _t, _tensors: dict) -> dict:
        if i + 1 == len(steps_seen):
            return {}
        seen = steps_seen[i + 1]
        attention.update(seen.get("cross_attention_kwargs") or {})
        swapped = {"prompt_embeds": seen["encoder_hidden_states"]}
        if sdxl:
            swapped["add_text_embeds"] = seen["added_cond_kwargs"]["text_embeds"]
        return swapped

    return dict(callback_on_step_end=next_step, callback_on_step_end_tensor_inputs=names)


def same_step(a: dict, b: dict) -> bool:
    """Whether two recorded UNet calls got the same conditioning: equal text rows (and
    SDXL pooled rows), the same attention context objects."""
    pooled = [(seen.get("added_cond_kwargs") or {}).get("text_embeds") for seen in (a, b)]
    return (torch.equal(a["encoder_hidden_states"], b["encoder_hidden_states"])
            and (pooled[0] is None or torch.equal(*pooled))
            and [id(v) for v in (a.get("cross_attention_kwargs") or {}).values()]
            == [id(v) for v in (b.get("cross_attention_kwargs") or {}).values()])


def check_replay(unet, call, steps_seen: list[dict]) -> None:
    """Run the baseline once (its warm-up) and refuse it unless its UNet saw, step by step,
    the conditioning ours saw."""
    replayed = recorded_calls(unet, call)
    if len(replayed) != len(steps_seen) or not all(map(same_step, replayed, steps_seen)):
        raise RuntimeError("the diffusers baseline does not denoise the tokens ours does")


def measure(method_name: str, args) -> float:
    method = build(method_name, args.tiny, args.fullsize, args.device, args.dtype)
    dtypes = unet_input_dtypes(method.unet)
    pipe, prompt = method.pipeline(scheduler="ddim"), RECIPES[method_name][2]
    ids, size = identities(method_name), (args.size, args.size)
    ours = ours_call(pipe, prompt, ids, size, args.steps)
    theirs, what = baseline(method, pipe, prompt, ids, size, args.steps)  # both warmed up
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
