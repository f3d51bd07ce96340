"""Each method's sampling pipeline against the diffusers pipeline doing the same denoising
work on the same weights.

    python -m benchmarks.sampling_overhead [--device cpu|cuda] [--tiny | --fullsize DIR]
        [--methods instantfamily portraitbooth sefi_ide storymaker] [--pairs 9] [--steps 4]
        [--size 512] [--threads N] [--dtype fp32|bf16|fp16]

The method is built from its recipe (``--tiny``: the demo configs on the tiny backbones;
otherwise the full-size recipes on the random folders ``python -m ldm_ext.fullsize DIR``
writes, built there if missing). Our pipeline runs once to record what its UNet is given at
the first step (``encoder_hidden_states`` with every identity token, ``added_cond_kwargs``,
``cross_attention_kwargs``); the diffusers pipeline then runs on the same UNet (our
processors installed), VAE, scheduler config and steps, with ``prompt_embeds`` /
``negative_prompt_embeds`` set to those recorded rows (and SDXL's pooled embeddings), so
both sides denoise the same tokens; the identity encoders (face, CLIP) are our side's only
extra work, as they are at real use. ``--dtype`` sets ``model.weight_dtype``, the frozen
weights' dtype, for both sides (they share the modules; the run stops if the UNet's inputs
differ in dtype between them): default fp32 on the CPU and the recipe's own on CUDA; bf16
suits a CPU with bf16 matmul kernels (AVX512-BF16 / AMX: ``lscpu``), where it halves the
memory of the full-size recipes; fp16 is refused on the CPU (no fp16 convolution kernels).
The baselines:

  instantfamily  ``StableDiffusionControlNetPipeline`` with the method's ControlNet and a
                 pose image of the same size.
  storymaker     ``StableDiffusionXLControlNetPipeline`` when the recipe has a pose
                 ControlNet (ours then gets a one-person pose template, so both sides run
                 it), else ``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline``,
                 with the same UNet and its decoupled (IP-Adapter-like) processors: the
                 image tokens reach them through the recorded ``cross_attention_kwargs``.
  portraitbooth, sefi_ide  ``StableDiffusion(XL)Pipeline`` with their conditioning.

A pair is one image from each side (who goes first alternates); a method's figure is the
median of its per-pair ratios (ours / diffusers seconds, ``benchmarks/timing.py``: CUDA
wall clock synchronised, CPU process time). Prints per method
``RESULT sampling_overhead_<method>_ratio=<x> goal<=1.03`` and the diffusers side's it/s.
"""
from __future__ import annotations

import argparse
import inspect
import statistics
from pathlib import Path

import torch

from benchmarks.timing import timed

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


def pose(method_name: str, method, size: tuple[int, int]) -> dict:
    """Our pipeline's pose input where the baseline runs the method's ControlNet and ours
    runs it only when given one (StoryMaker); else nothing."""
    if method_name != "storymaker" or getattr(method, "controlnet", None) is None:
        return {}
    from ldm_ext.perception.pose import pose_template

    return {"people": pose_template(1, size)}


def record_first_call(module: torch.nn.Module) -> dict:
    """Hook ``module`` so the arguments of its next forward, by name, are stored in the
    returned dict."""
    seen: dict = {}
    signature = inspect.signature(module.forward)

    def hook(_, args, kwargs):
        if "sample" not in seen:
            seen.update(signature.bind(*args, **kwargs).arguments)
        return None

    seen["handle"] = module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def ours_call(pipe, prompt, ids, size, steps, extra: dict):
    return lambda: pipe(prompt, ids, size=size, steps=steps, guidance=7.5,
                        generator=torch.Generator().manual_seed(0), progress=False, **extra)


def baseline(method, ours_pipe, prompt, ids, size, steps, extra: dict):
    """(callable, description, what ours gave the UNet at its first step) of the diffusers
    pipeline on the same weights and tokens."""
    import diffusers

    seen = record_first_call(method.unet)
    ours_call(ours_pipe, prompt, ids, size, 1, extra)()
    seen.pop("handle").remove()
    hidden = seen["encoder_hidden_states"]  # (2B, L, D): negative rows, then conditional
    half = hidden.shape[0] // 2
    kwargs = dict(prompt_embeds=hidden[half:], negative_prompt_embeds=hidden[:half],
                  cross_attention_kwargs=seen.get("cross_attention_kwargs"))
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
    call = lambda: pipe(height=size[0], width=size[1], num_inference_steps=steps,  # noqa: E731
                        guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                        output_type="pil", **kwargs)
    return call, f"{name} ({2 * half} rows x {hidden.shape[1]} keys)", seen


def input_dtypes(seen: dict) -> tuple[torch.dtype, torch.dtype]:
    """(latents, encoder states) dtypes of a recorded UNet call."""
    return seen["sample"].dtype, seen["encoder_hidden_states"].dtype


def same_dtypes(unet: torch.nn.Module, ours: dict, baseline_call) -> str:
    """Run ``baseline_call`` once and check that its UNet got latents and encoder states of
    the dtypes ours did (``ours``: our side's recorded UNet call); RuntimeError if not.
    -> the latents' dtype, e.g. "bfloat16"."""
    theirs = record_first_call(unet)
    baseline_call()
    theirs.pop("handle").remove()
    if input_dtypes(ours) != input_dtypes(theirs):
        raise RuntimeError(f"UNet inputs (latents, encoder states) in {input_dtypes(ours)} on "
                           f"our side but {input_dtypes(theirs)} on the baseline's")
    return str(input_dtypes(ours)[0]).removeprefix("torch.")


def measure(method_name: str, args) -> float:
    method = build(method_name, args.tiny, args.fullsize, args.device, args.dtype)
    pipe, prompt = method.pipeline(scheduler="ddim"), RECIPES[method_name][2]
    ids, size = identities(method_name), (args.size, args.size)
    extra = pose(method_name, method, size)
    ours = ours_call(pipe, prompt, ids, size, args.steps, extra)
    theirs, what, ours_unet_in = baseline(method, pipe, prompt, ids, size, args.steps, extra)
    ours()  # warm-up (the baseline's: checking its dtypes)
    dtype = same_dtypes(method.unet, ours_unet_in, theirs)
    ratios, base_seconds = [], []
    for pair in range(args.pairs):
        first, second = (ours, theirs) if pair % 2 == 0 else (theirs, ours)
        a, b = timed(first, args.device), timed(second, args.device)
        ours_s, base_s = (a, b) if pair % 2 == 0 else (b, a)
        ratios.append(ours_s / base_s)
        base_seconds.append(base_s)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios * 3)
    ratio = statistics.median(ratios)
    print(f"{method_name}: vs {what}, {args.steps} steps at {args.size}² in {dtype}, quartiles "
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
    parser.add_argument("--size", type=int, default=None, help="default: 64 tiny, 512 full")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="frozen weights' dtype, both sides (default: fp32 on the CPU, "
                        "the recipe's on CUDA; fp16 is refused on the CPU)")
    args = parser.parse_args(argv)
    try:
        args.dtype = weight_dtype(args.device, args.dtype)
    except ValueError as err:
        parser.error(str(err))
    args.size = args.size or (64 if args.tiny else 512)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.methods:
        measure(name, args)


if __name__ == "__main__":
    main()
