"""The diffusers side of ``sampling_overhead.py``: the diffusers pipeline doing the work our
pipeline did, on the same modules.

Our pipeline runs once while every UNet call's arguments and the rows its text encoder
encodes are recorded (``record``). The baseline (``baseline``) is the diffusers pipeline of
the same family on the same UNet, VAE, text encoders, scheduler config and ControlNet:

- it encodes as many text rows as ours did, through its own ``encode_prompt``: its
  negative prompt and the rest as prompt rows. A diffusers call of the same conditioning
  would: its prompt and negative prompt, and for tokens that change with the denoising
  stage (SeFi-IDE's per-stage keys and values, textual-inversion-like tokens) one prompt
  per visited stage and role. The encoded rows are then replaced by the recorded ones.
- it denoises with the recorded rows: ``prompt_embeds`` / ``negative_prompt_embeds`` of the
  first step (and SDXL's pooled rows) and, where ours changed them from step to step, each
  next step's through ``callback_on_step_end``, with our attention context through
  ``cross_attention_kwargs``; checked once before timing (``check_replay``).
- with an ``IPAdapter`` (StoryMaker's decoupled attention) it instead loads the method's
  own image projection and image K / V in IP-Adapter Plus's released layout with diffusers'
  ``load_ip_adapter`` and is handed the reference image: it runs the CLIP image encoder (on
  the image and on zeros), its resampler at every UNet call and diffusers' IP-Adapter
  attention processors. The two processor sets share the UNet and are swapped before each
  call (``IPAdapterSwap``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Record:
    """What our pipeline's run gave its UNet (each call's arguments by name) and how many
    rows its first text encoder encoded."""

    steps: list[dict]
    text_rows: int


@dataclass
class IPAdapter:
    """An IP-Adapter for the baseline: ``state`` in the released layout ({"image_proj":
    ..., "ip_adapter": ...}), the ``image_encoder`` it reads and the reference ``image``."""

    state: dict
    image_encoder: torch.nn.Module
    image: object


def recorded_calls(module: torch.nn.Module, run: Callable[[], object]) -> list[dict]:
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


def record(method, run: Callable[[], object]) -> Record:
    """Our pipeline's UNet calls and text rows during ``run()``."""
    rows: list[int] = []
    encoder = method.backbone.text_encoders[0]
    handle = encoder.register_forward_hook(lambda _m, _args, out: rows.append(len(out[0])))
    try:
        steps = recorded_calls(method.unet, run)
    finally:
        handle.remove()
    return Record(steps, sum(rows))


def baseline(method, scheduler, prompt: str, size: tuple[int, int], steps: int,
             seen: Record, adapter: IPAdapter | None = None):
    """(callable, description, callable that puts our processors back before our call) of
    the diffusers pipeline doing the work of ``seen``."""
    if len(seen.steps) != steps:
        raise RuntimeError(f"our pipeline called the UNet {len(seen.steps)} times in {steps} "
                           "steps; the baseline replays one call per step")
    first = seen.steps[0]
    hidden = first["encoder_hidden_states"]  # (2B, L, D): negative rows, then conditional
    half = hidden.shape[0] // 2
    kwargs = dict(prompt_embeds=hidden[half:], negative_prompt_embeds=hidden[:half])
    sdxl = method.backbone.family == "sdxl"
    if sdxl:
        pooled = first["added_cond_kwargs"]["text_embeds"]
        kwargs.update(pooled_prompt_embeds=pooled[half:],
                      negative_pooled_prompt_embeds=pooled[:half])
    pipe, name = diffusers_pipeline(method, scheduler, adapter)
    if getattr(method, "controlnet", None) is not None:
        kwargs["image"] = torch.zeros(1, 3, *size)
    swap = IPAdapterSwap(pipe, adapter.state) if adapter else None
    if adapter:
        kwargs["ip_adapter_image"] = adapter.image
    varying = not all(same_step(s, first) for s in seen.steps[1:])  # asked once, not timed

    def call():
        if swap:
            swap.use(theirs=True)
        encode_rows(pipe, prompt, seen.text_rows, method.device)
        attention = dict(first.get("cross_attention_kwargs") or {}) if not swap else {}
        return pipe(height=size[0], width=size[1], num_inference_steps=steps,
                    guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                    output_type="pil", cross_attention_kwargs=attention or None, **kwargs,
                    **(step_swaps(seen.steps, attention, sdxl) if varying else {}))

    check_replay(method.unet, call, seen.steps, image_tokens=swap is not None)
    what = (f"{name} ({2 * half} rows x {hidden.shape[1]} keys, "
            f"{seen.text_rows} text rows encoded)")
    if swap:
        tokens = adapter.state["image_proj"]["latents"].shape[1]
        what += f" with an IP-Adapter Plus ({tokens} image tokens) of the same weights"
    return call, what, (lambda: swap.use(theirs=False)) if swap else (lambda: None)


def diffusers_pipeline(method, scheduler, adapter: IPAdapter | None):
    """(pipeline, class name): the diffusers pipeline of the method's family (its
    ControlNet's where it has one) on its modules, with the adapter's image encoder."""
    import diffusers

    sdxl = method.backbone.family == "sdxl"
    parts = dict(vae=method.vae, unet=method.unet, scheduler=scheduler,
                 tokenizer=method.backbone.tokenizers[0],
                 text_encoder=method.backbone.text_encoders[0], feature_extractor=None,
                 image_encoder=adapter.image_encoder if adapter else None)
    if sdxl:
        parts.update(text_encoder_2=method.backbone.text_encoders[1],
                     tokenizer_2=method.backbone.tokenizers[1])
    else:
        parts.update(safety_checker=None, requires_safety_checker=False)
    controlnet = getattr(method, "controlnet", None)
    if controlnet is not None:
        parts["controlnet"] = controlnet
    name = ("StableDiffusionXL" if sdxl else "StableDiffusion") + (
        "ControlNet" if controlnet is not None else "") + "Pipeline"
    pipe = getattr(diffusers, name)(**parts)
    if sdxl:
        pipe.watermark = None
    pipe.set_progress_bar_config(disable=True)
    return pipe, name


def encode_rows(pipe, prompt: str, rows: int, device) -> None:
    """The baseline's own text encoding, ``rows`` rows as ours: its negative prompt, then
    the rest as prompt rows (replaced by the recorded rows afterwards)."""
    for batch in ([prompt] * max(rows - 1, 1), [""]):
        pipe.encode_prompt(prompt=batch, device=device, num_images_per_prompt=1,
                           do_classifier_free_guidance=False)


def step_swaps(steps_seen: list[dict], attention: dict, sdxl: bool) -> dict:
    """diffusers call arguments that give step i + 1 what our UNet got at step i + 1, for
    steps whose conditioning changes: its text rows (and SDXL pooled rows) through
    ``callback_on_step_end``, its attention context into ``attention`` (the call's
    ``cross_attention_kwargs``)."""
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


def same_text(a: dict, b: dict) -> bool:
    """Whether two recorded UNet calls got equal text rows (and SDXL pooled rows)."""
    pooled = [(seen.get("added_cond_kwargs") or {}).get("text_embeds") for seen in (a, b)]
    return (torch.equal(a["encoder_hidden_states"], b["encoder_hidden_states"])
            and (pooled[0] is None or torch.equal(*pooled)))


def same_step(a: dict, b: dict) -> bool:
    """Whether two recorded UNet calls got the same conditioning: equal text rows (and
    SDXL pooled rows), the same attention context objects."""
    return same_text(a, b) and ([id(v) for v in (a.get("cross_attention_kwargs") or {}).values()]
                                == [id(v) for v in (b.get("cross_attention_kwargs") or {}).values()])


def check_replay(unet, call, steps_seen: list[dict], image_tokens: bool = False) -> None:
    """Run the baseline once (its warm-up) and refuse it unless its UNet saw, step by step,
    the conditioning ours saw: the same text rows and attention context, or with
    ``image_tokens`` (an IP-Adapter's, its own) the same text rows and image embeddings."""
    replayed = recorded_calls(unet, call)
    match = ((lambda a, b: same_text(a, b) and "image_embeds" in a["added_cond_kwargs"])
             if image_tokens else same_step)
    if len(replayed) != len(steps_seen) or not all(map(match, replayed, steps_seen)):
        raise RuntimeError("the diffusers baseline does not denoise the tokens ours does")


class IPAdapterSwap:
    """One UNet, two sets of attention processors: ours (as installed) and those of an
    IP-Adapter that diffusers' ``load_ip_adapter`` loads from ``state``; ``use`` puts one
    set in place (with the IP-Adapter's image projection) before a call."""

    def __init__(self, pipe, state: dict) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet = self.unet = pipe.unet
        self.ours, self.hid_type = dict(unet.attn_processors), unet.config.encoder_hid_dim_type
        # diffusers' self-attention (load_ip_adapter rebuilds attn1's processor by its class)
        unet.set_attn_processor(AttnProcessor2_0())
        # load_ip_adapter casts the whole UNet to its first weight's dtype: ours stay theirs
        kept = {n: p.detach().clone() for n, p in unet.named_parameters()
                if p.dtype != unet.dtype}
        pipe.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
        for name, value in kept.items():
            unet.get_parameter(name).data = value
        self.theirs, self.projection = dict(unet.attn_processors), unet.encoder_hid_proj
        self.use(theirs=False)

    def use(self, theirs: bool) -> None:
        # first: the projection's own attention layers count among the UNet's processors
        self.unet.encoder_hid_proj = self.projection if theirs else None
        self.unet.set_attn_processor(dict(self.theirs if theirs else self.ours))
        self.unet.config.encoder_hid_dim_type = "ip_image_proj" if theirs else self.hid_type
