"""Overhead of our attention processors vs diffusers' at SD1.5 shapes (inference, fp32).

    python benchmarks/attention_overhead.py [--device cpu|cuda] [--quick]

Four cases, each ours vs a diffusers baseline in the same process:
  layers/masked     the 16 SD1.5 cross-attention layers at their real query lengths
                    (4096/1024/256/64 for 512² images; widths 320/640/1280, 8 heads),
                    batch 2, 117 keys (77 text + 4 faces x 10 tokens): `IdAttnProcessor`
                    with 4-face masks (multiply mode) vs `AttnProcessor2_0` (no mask).
  layers/decoupled  same layers, 77 text + 4x16 image tokens: `DecoupledAttnProcessor`
                    vs `IPAdapterAttnProcessor2_0` (same weights, scale 1).
  unet/masked       one SD1.5-size UNet forward (default `UNet2DConditionModel` config with
                    SD1.5's 768-wide text, random init, 64² latents, batch 1): our
                    processors with the face masks on every layer vs `AttnProcessor2_0`.
  unet/decoupled    the same UNet, decoupled processors on cross-attention vs
                    `IPAdapterAttnProcessor2_0` there (self-attention `AttnProcessor2_0`).
Each case is warmed up, then timed `repeats` times, ours and baseline interleaved (order
alternating); a case's time is the median of its repeats.

RESULT x = (sum over the four cases of our median time) / (sum over the four cases of the
baseline's median time), i.e. total time ratio; the UNet cases dominate that sum, so the
table also prints each case's own ratio. --quick: tiny UNet, 32² latents, few repeats.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import (Attention, AttnProcessor2_0,
                                                  IPAdapterAttnProcessor2_0)

from ldm_ext.attention import (AttentionContext, DecoupledAttnProcessor, IdAttnProcessor,
                               TokenLayout, build_face_masks, install_processors)

LAYOUT = TokenLayout(num_text=77, num_slots=4, tokens_per_face=10)
IMAGE_TOKENS, TEXT_DIM = 4 * 16, 768
# (queries, width) of SD1.5's 16 cross-attention layers: down, mid, up
SD15_LAYERS = ([(4096, 320)] * 2 + [(1024, 640)] * 2 + [(256, 1280)] * 2 + [(64, 1280)]
               + [(256, 1280)] * 3 + [(1024, 640)] * 3 + [(4096, 320)] * 3)
BOXES = torch.tensor([[0.05, 0.10, 0.25, 0.35], [0.30, 0.15, 0.50, 0.40],
                      [0.55, 0.10, 0.75, 0.35], [0.78, 0.20, 0.98, 0.45]])
Case = tuple[Callable[[], object], Callable[[], object]]  # (ours, baseline)


def face_context(batch: int, latent: int, device: str) -> AttentionContext:
    boxes = BOXES.expand(batch, -1, -1).to(device)
    valid = torch.ones(batch, LAYOUT.num_slots, dtype=torch.bool, device=device)
    return AttentionContext(face_masks=build_face_masks(boxes, valid, LAYOUT, (latent, latent)))


def layer_cases(device: str) -> dict[str, Case]:
    """Calls of the 16 layers through `Attention.forward`, ours and diffusers'."""
    gen = torch.Generator().manual_seed(0)
    batch = 2
    text = torch.randn(batch, LAYOUT.total, TEXT_DIM, generator=gen).to(device)
    image = torch.randn(batch, IMAGE_TOKENS, TEXT_DIM, generator=gen).to(device)
    ctx_faces, ctx_image = face_context(batch, 64, device), AttentionContext(image_tokens=image)
    calls = {"masked": ([], []), "decoupled": ([], [])}
    for i, (queries, width) in enumerate(SD15_LAYERS):
        attn = Attention(width, TEXT_DIM, heads=8, dim_head=width // 8).to(device).eval()
        hidden = torch.randn(batch, queries, width, generator=gen).to(device)
        ours_ip = DecoupledAttnProcessor(f"l{i}", width, TEXT_DIM).to(device)
        ref_ip = IPAdapterAttnProcessor2_0(width, TEXT_DIM, num_tokens=(IMAGE_TOKENS,)).to(device)
        ref_ip.to_k_ip[0].load_state_dict(ours_ip.to_k_ip.state_dict())
        ref_ip.to_v_ip[0].load_state_dict(ours_ip.to_v_ip.state_dict())
        calls["masked"][0].append((attn, IdAttnProcessor(f"l{i}"), hidden, text, ctx_faces))
        calls["masked"][1].append((attn, AttnProcessor2_0(), hidden, text, None))
        calls["decoupled"][0].append((attn, ours_ip, hidden, text[:, :77], ctx_image))
        calls["decoupled"][1].append((attn, ref_ip, hidden, (text[:, :77], [image]), None))
    return {f"layers/{k}": (_run_layers(ours), _run_layers(ref))
            for k, (ours, ref) in calls.items()}


def _run_layers(calls: list) -> Callable[[], None]:
    def run() -> None:
        for attn, proc, hidden, context, ctx in calls:
            attn.set_processor(proc)
            kwargs = {} if ctx is None else {"ctx": ctx}
            attn(hidden, encoder_hidden_states=context, **kwargs)
    return run


def unet_cases(device: str, quick: bool) -> dict[str, Case]:
    """Full UNet forwards; processors are swapped in before each call."""
    torch.manual_seed(0)
    if quick:
        unet = UNet2DConditionModel(block_out_channels=(32, 64, 64, 64),
                                    cross_attention_dim=TEXT_DIM)
    else:  # the default config is SD1.5's but for its 1280-wide text (SD1.5: 768)
        unet = UNet2DConditionModel(cross_attention_dim=TEXT_DIM)
    unet = unet.to(device).eval()
    latent = 32 if quick else 64
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, latent, latent, generator=gen).to(device)
    text = torch.randn(1, LAYOUT.total, TEXT_DIM, generator=gen).to(device)
    image = torch.randn(1, IMAGE_TOKENS, TEXT_DIM, generator=gen).to(device)
    masked, decoupled = install_processors(unet), install_processors(unet, decoupled=True)
    reference = _ip_adapter_processors(unet, decoupled)
    baseline = {k: AttnProcessor2_0() for k in masked}

    def forward(procs, context, ctx=None) -> Callable[[], None]:
        kwargs = None if ctx is None else {"ctx": ctx}
        def run() -> None:
            unet.set_attn_processor(dict(procs))
            unet(sample, 500, encoder_hidden_states=context, cross_attention_kwargs=kwargs)
        return run
    return {
        "unet/masked": (forward(masked, text, face_context(1, latent, device)),
                        forward(baseline, text)),
        "unet/decoupled": (forward(decoupled, text[:, :77], AttentionContext(image_tokens=image)),
                           forward(reference, (text[:, :77], [image]))),
    }


def _ip_adapter_processors(unet, decoupled: dict) -> dict:
    """diffusers' IP-Adapter processors with the weights of our decoupled ones."""
    procs = {}
    for key, ours in decoupled.items():
        if not isinstance(ours, DecoupledAttnProcessor):
            procs[key] = AttnProcessor2_0()
            continue
        ref = IPAdapterAttnProcessor2_0(ours.to_k_ip.out_features, TEXT_DIM,
                                        num_tokens=(IMAGE_TOKENS,)).to(ours.to_k_ip.weight.device)
        ref.to_k_ip[0].load_state_dict(ours.to_k_ip.state_dict())
        ref.to_v_ip[0].load_state_dict(ours.to_v_ip.state_dict())
        procs[key] = ref
    return procs


def timed(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(cases: dict[str, Case], device: str, warmup: int, repeats: int) -> dict:
    """Median seconds per case for (ours, baseline), interleaved, order alternating."""
    times = {name: ([], []) for name in cases}
    for name, pair in cases.items():
        for fn in pair * warmup:
            fn()
    for rep in range(repeats):
        for name, pair in cases.items():
            order = (0, 1) if rep % 2 == 0 else (1, 0)
            for i in order:
                times[name][i].append(timed(pair[i], device))
    return {name: tuple(statistics.median(t) for t in pair) for name, pair in times.items()}


def report(results: dict) -> None:
    print(f"{'case':<18}{'ours ms':>12}{'baseline ms':>14}{'ratio':>8}")
    for name, (ours, base) in results.items():
        print(f"{name:<18}{ours * 1e3:>12.1f}{base * 1e3:>14.1f}{ours / base:>8.3f}")
    total_ours = sum(o for o, _ in results.values())
    total_base = sum(b for _, b in results.values())
    print(f"{'total':<18}{total_ours * 1e3:>12.1f}{total_base * 1e3:>14.1f}"
          f"{total_ours / total_base:>8.3f}")
    print(f"RESULT attention_overhead_ratio={total_ours / total_base:.3f} goal<=1.10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny UNet, 32² latents, few repeats")
    args = parser.parse_args()
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}")
    with torch.no_grad():
        results = measure(layer_cases(args.device), args.device, warmup=2,
                          repeats=3 if args.quick else 7)
        results |= measure(unet_cases(args.device, args.quick), args.device, warmup=1,
                           repeats=1 if args.quick else 3)
    report(results)


if __name__ == "__main__":
    main()
