"""The Python API of generation: ``load_pipeline`` a run or export, call it like a
diffusers pipeline::

    from ldm_ext import load_pipeline

    pipe = load_pipeline("runs/demo", device="auto")
    out = pipe("a photo of two friends on the beach", photos=["a.jpg", "b.jpg"], seed=0)
    out.images[0].save("beach.png")

Any method works: the method's own inputs (InstantFamily's ``group`` / ``num_ids`` /
``pose_image``, PortraitBooth's ``layout``, StoryMaker's ``masks`` / ``zero_character`` /
``ip_scale`` / ``lora_scale``, SeFi-IDE's ``identities``) are keywords, declared by the
method (its config's ``GENERATION_INPUTS``) and checked before anything is computed.
``python -m ldm_ext.generate`` is a thin shell over this module: the same seed gives the
same images, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

from PIL import Image

from ldm_ext.cli import InputError
from ldm_ext.config import SAMPLERS
from ldm_ext.folders import header_shapes
from ldm_ext.methods.loading import check_weights, load_run, run_config, run_folder
from ldm_ext.pipelines import options as opts
from ldm_ext.registry import method_spec

Size = int | tuple[int, int]


@dataclass
class GenerationOutput:
    """What a call returns: ``images``, one PIL image per ``num_images``, image k drawn
    with its own generator (seed, k), so it is the same whatever ``num_images`` is."""

    images: list[Image.Image]


def load_pipeline(path: str | Path, device: str = "auto") -> GenerationPipeline:
    """The generation pipeline of a run folder (``train.py``), an export folder
    (``ldm_ext.export``) or a weights file inside a run, on ``device`` (``auto``: CUDA
    when present, else CPU). Weights of another method or run and a device this machine
    lacks are InputErrors raised before the model loads."""
    run_dir, weights = run_folder(path)
    check_weights(run_dir, weights, header_shapes(weights))  # before torch, where headers tell
    torch_device = resolve_device(device)
    return GenerationPipeline(load_run(path).to(torch_device))


def resolve_device(name: str):
    """The ``torch.device`` of ``--device`` ``name``; ``auto``: ``cuda`` when CUDA is
    available, else ``cpu``. A name torch does not know, or a device this machine does
    not have, is an InputError. CUDA is asked through ``ldm_ext.devices`` (as train and
    eval ask it): a machine that plainly has no GPU answers before torch is imported."""
    from ldm_ext.devices import cuda_device_count

    gpus = cuda_device_count()
    if name.split(":")[0] == "cuda" and not gpus:
        raise InputError(f"--device {name}: CUDA is not available on this machine; "
                         "use --device cpu or auto")
    import torch

    if name == "auto":
        return torch.device("cuda" if gpus else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N, mps)") \
            from None
    if device.type == "cuda" and (device.index or 0) >= gpus:
        raise InputError(f"--device {name}: this machine has {gpus} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {name}: MPS is not available on this machine")
    return device


def check_size(size: Size | None, multiple: int = opts.SIZE_MULTIPLE,
               source: str = "--size") -> tuple[int, int] | None:
    """``size`` (a side, or (height, width)) as (H, W); each side a positive multiple of
    ``multiple`` (the VAE's downsampling), else an InputError naming ``source``."""
    if size is None:
        return None
    hw = (size, size) if isinstance(size, Integral) else tuple(size)
    if len(hw) != 2 or not all(isinstance(side, Integral) and side > 0 for side in hw):
        raise InputError(f"{source} {size}: expected a side or (height, width) in pixels")
    hw = (int(hw[0]), int(hw[1]))
    if any(side % multiple for side in hw):
        shown = size if isinstance(size, Integral) else "x".join(map(str, hw))
        raise InputError(f"{source} {shown}: must be a multiple of {multiple} (the VAE "
                         f"downsamples {multiple}x)")
    return hw


def check_request(cfg, values: dict[str, Any], size: Size | None = None, num_images: int = 1,
                  steps: int | None = None, sampler: str | None = None) -> tuple[int, int] | None:
    """Everything about one generation request that needs no model: the method's inputs
    ``values`` against its run config ``cfg`` (``options.check``), the size, counts and
    sampler; returns the size as (H, W), or None when not given."""
    opts.check(values, method_spec(cfg.method.name).config_class.GENERATION_INPUTS, cfg)
    for flag, count in (("--num-images", num_images), ("--steps", steps)):
        if count is not None and (not isinstance(count, Integral) or count < 1):
            raise InputError(f"{flag} {count}: must be a whole number >= 1")
    if sampler is not None and sampler not in SAMPLERS:
        raise InputError(f"--sampler {sampler}: one of {', '.join(SAMPLERS)}")
    return check_size(size)


class GenerationPipeline:
    """A trained method ready to generate: ``pipe(prompt, photos=..., **inputs)``.

    Wraps the method's own pipeline (``ldm_ext/pipelines/<method>.py``, through the
    registry) with the run's defaults (sampler, steps, guidance, resolution)."""

    def __init__(self, method) -> None:
        self.method = method
        self.cfg = method.cfg
        self.inputs = method_spec(self.cfg.method.name).config_class.GENERATION_INPUTS
        self.pipeline = method.pipeline()

    @property
    def device(self):
        return self.method.device

    def __call__(self, prompt: str, photos: list | None = None, *, pose: str | None = None,
                 num_images: int = 1, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, negative_prompt: str = "",
                 size: Size | None = None, sampler: str | None = None, progress: bool = True,
                 **inputs: Any) -> GenerationOutput:
        """``num_images`` images of ``prompt``. ``photos`` (paths or PIL images), ``pose``
        (a pose JSON file) and ``inputs`` are the method's own inputs (see
        ``GENERATION_INPUTS`` of its config; an input it does not take is an error);
        ``size``: a side or (height, width), default the pose file's or the training
        resolution; ``steps`` / ``guidance`` / ``sampler``: default the run's
        ``method.sample_steps`` / ``guidance_scale`` / ``sampler``. Image k is drawn
        with generator (``seed``, k)."""
        from ldm_ext.pipelines.sampling import image_generator, inference_scheduler

        given = {"photos": photos, "pose": pose, **inputs}
        values = opts.from_keywords({k: v for k, v in given.items() if v is not None},
                                    self.inputs, self.cfg.method.name)
        hw = check_request(self.cfg, values, size, num_images, steps, sampler)
        cfg, pipe = self.cfg.method, self.pipeline
        pipe.scheduler = inference_scheduler(self.method.backbone.scheduler,
                                             sampler or cfg.sampler)
        call = pipe.inputs(values, hw)
        identities = call.pop("identities")
        fixed = call.pop("size", None)
        hw = check_size(hw or fixed or (self.cfg.data.resolution,) * 2,
                        self.method.backbone.vae_scale,
                        "--size" if hw or not fixed else f"--pose {values.get('pose')} size")
        images = [pipe(prompt, identities, size=hw, steps=steps or cfg.sample_steps,
                       guidance=cfg.guidance_scale if guidance is None else guidance,
                       generator=image_generator(seed, k), negative_prompt=negative_prompt,
                       progress=progress, **call)
                  for k in range(num_images)]
        return GenerationOutput(images)


def request_config(path: str | Path):
    """The run config (loading values) of ``path``, without loading anything heavy: what
    ``ldm_ext.generate`` checks its flags against before the model loads."""
    return run_config(run_folder(path)[0])
