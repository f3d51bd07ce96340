"""StoryMaker's training step: its cost against a bare loop, and the attention loss's cost.

The model is SDXL-shaped at reduced widths (two text encoders, the text-time embedding, 3
UNet levels with 1 / 2 / 2 transformer blocks), a random ArcFace (IResNet-18) and a tiny
CLIP vision model, LoRA rank 32 on every attention projection, 128² images of two and one
characters; drops off, so both sides do the same work.

- step overhead: ``trainer.fit`` of the ``StoryMaker`` LightningModule against a hand-written
  loop doing the same diffusers + peft calls (VAE, text encoders, encoders + PPR, UNet with
  decoupled attention, weighted MSE + attention loss, backward, clipping, AdamW);
- attention-loss overhead: the same step with λ = 0.1 against λ = 0 (no softmax map is
  materialised then; with it only the loss layers keep theirs).

Each figure is the median over ``--pairs`` short interleaved pairs (the order alternating) of
the pair's ratio of median step times, so load on a shared machine hits both sides alike.
Steps are timed in wall clock (CUDA synchronised), as ``step_overhead.py`` times them.

    python -m benchmarks.storymaker_step [--device cpu|cuda] [--pairs 8] [--steps 3]

Ends with ``RESULT storymaker_step_overhead_ratio=<ours/bare> goal<=1.05`` and
``RESULT storymaker_attn_loss_overhead_ratio=<with/without> goal<=1.15``.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.lightning_timing import lightning_steps
from benchmarks.timing import Stopwatch
from ldm_ext.attention import AttentionContext
from ldm_ext.backbone import encode_prompt, tokenize
from ldm_ext.config import load_config
from ldm_ext.face import build_face_encoder
from ldm_ext.methods.storymaker import StoryMaker
from ldm_ext.methods.storymaker_encoders import load_image_encoder
from ldm_ext.methods.storymaker_losses import (attention_loss, person_weights,
                                               weighted_noise_loss)
from ldm_ext.random_backbone import Widths, random_backbone

STEP_GOAL, LOSS_GOAL, WARMUP, SIZE = 1.05, 1.15, 1, 128
NO_DROPS = ["method.empty_prompt_prob=0", "method.drop_characters=0", "method.drop_both=0",
            "method.drop_face_tokens=0", "method.drop_character_tokens=0"]
# SDXL's architecture at reduced widths
SDXL_WIDTHS = Widths(unet_channels=(32, 64, 128), text_width=64, text_layers=2, text_heads=4,
                     unet_groups=16, head_dim=(1, 2, 4), transformer_layers=(1, 2, 2),
                     time_embed=32, vae_channels=(16, 32, 32, 32), vae_layers=1, vae_groups=16)


def build(device: str) -> StoryMaker:
    cfg = load_config("configs/experiment/storymaker_demo.yaml",
                      [*NO_DROPS, f"data.resolution={SIZE}", "method.attn_loss_layers=lowest",
                       "method.lora_rank=32", "trainer.gradient_clip_val=1.0"])
    backbone = random_backbone("sdxl", SDXL_WIDTHS, resolution=SIZE)
    method = StoryMaker(cfg, backbone, build_face_encoder("arcface", "random", arch="r18"),
                        load_image_encoder("tiny"))
    return method.to(device).train()


def make_batch() -> dict:
    """Two images: two characters and one (of two slots), their masks side by side."""
    gen = torch.Generator().manual_seed(0)
    valid = torch.tensor([[True, True], [True, False]])
    masks = torch.zeros(2, 2, SIZE, SIZE)
    masks[:, 0, SIZE // 4:, :SIZE // 2] = masks[:, 1, SIZE // 4:, SIZE // 2:] = 1
    return {"pixel_values": torch.rand(2, 3, SIZE, SIZE, generator=gen) * 2 - 1,
            "caption": ["two people in a park", "a person on a beach"],
            "face_crops": torch.rand(2, 2, 3, 160, 160, generator=gen) * 2 - 1,
            "characters": torch.rand(2, 2, 3, 224, 224, generator=gen),
            "character_masks": masks * valid[:, :, None, None], "face_valid": valid}


def bare_steps(method: StoryMaker, batch: dict, steps: int, device: str) -> list[float]:
    """``StoryMaker.model_step`` + AdamW written inline, without Lightning or the method's
    step plumbing (generators, drops, logging, guards)."""
    optim = method.configure_optimizers()
    opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    valid, params, times = b["face_valid"], list(method.trainable_parameters().values()), []
    clock = Stopwatch(device)
    for step in range(steps):
        clock.start()
        gen = torch.Generator(device=device).manual_seed(step)
        with torch.no_grad():
            latents = method.vae.encode(b["pixel_values"]).latent_dist.sample(gen) * \
                method.vae.config.scaling_factor
            text, pooled = encode_prompt(method.backbone, tokenize(method.backbone,
                                                                   b["caption"], device))
        store = method.loss_store()
        ctx = AttentionContext(image_tokens=method.image_tokens(b["face_crops"], b["characters"],
                                                                valid),
                               image_mask=method.image_mask(valid), store=store)
        noise = torch.randn(latents.shape, generator=gen, device=device)
        t = torch.randint(0, 1000, (2,), generator=gen, device=device)
        ids = torch.tensor([SIZE, SIZE, 0, 0, SIZE, SIZE], device=device).expand(2, -1)
        pred = method.unet(method.backbone.scheduler.add_noise(latents, noise, t), t, text,
                           added_cond_kwargs={"text_embeds": pooled, "time_ids": ids},
                           cross_attention_kwargs={"ctx": ctx}).sample
        weights = person_weights(b["character_masks"], valid, torch.ones(2, dtype=torch.bool,
                                 device=device), tuple(latents.shape[-2:]), 5.0)
        maps = [store.maps[f"{n}:ip"] for n in method.loss_layers]
        loss = weighted_noise_loss(pred, noise, weights) + 0.1 * attention_loss(
            maps, b["character_masks"], valid, method.ppr.tokens_per_character)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(clock.elapsed())
    return times


def module_steps(method: StoryMaker, batch: dict, steps: int, device: str,
                 weight: float) -> list[float]:
    """``model_step`` + backward + AdamW at attention-loss weight λ = ``weight``."""
    method.cfg.method.attn_loss_weight = weight
    opt = method.configure_optimizers()["optimizer"]
    b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    times = []
    clock = Stopwatch(device)
    for step in range(steps):
        clock.start()
        method.model_step(b, torch.Generator(device=device).manual_seed(step))["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(clock.elapsed())
    return times


def paired_ratio(first, second, pairs: int) -> tuple[float, float, float]:
    """Median over ``pairs`` of median(first) / median(second), alternating which runs
    first; also the overall medians of each side."""
    ratios, all_a, all_b = [], [], []
    for pair in range(pairs):
        order = (first, second) if pair % 2 == 0 else (second, first)
        runs = {id(f): f()[WARMUP:] for f in order}
        a, b = runs[id(first)], runs[id(second)]
        all_a, all_b = all_a + a, all_b + b
        ratios.append(statistics.median(a) / statistics.median(b))
    return statistics.median(ratios), statistics.median(all_a), statistics.median(all_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=8, help="interleaved pairs per figure")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side of a pair")
    args = parser.parse_args()
    device, pairs, steps = args.device, args.pairs, args.steps
    torch.manual_seed(0)
    if device == "cpu":  # on a shared machine, multi-threaded CPU steps swing by 10x
        torch.set_num_threads(1)
    method, batch, n = build(device), make_batch(), steps + WARMUP
    ratio, ours, bare = paired_ratio(lambda: lightning_steps(method, batch, n, device),
                                     lambda: bare_steps(method, batch, n, device), pairs)
    print(f"median step: ours {ours:.3f} s, bare loop {bare:.3f} s ({pairs} pairs)")
    print(f"RESULT storymaker_step_overhead_ratio={ratio:.3f} goal<={STEP_GOAL}")
    ratio, with_loss, without = paired_ratio(
        lambda: module_steps(method, batch, n, device, 0.1),
        lambda: module_steps(method, batch, n, device, 0.0), pairs)
    print(f"median step: with attention loss {with_loss:.3f} s, without {without:.3f} s")
    print(f"RESULT storymaker_attn_loss_overhead_ratio={ratio:.3f} goal<={LOSS_GOAL}")


if __name__ == "__main__":
    main()
