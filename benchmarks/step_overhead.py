"""Cost of our Lightning training step vs a bare PyTorch loop doing the same diffusers calls.

Both sides train the same InstantFamily model (a mid-size SD1.5-shaped UNet + ControlNet,
FaceNet, masked attention) on the same in-memory batch:

- ours: ``trainer.fit`` of the ``InstantFamily`` LightningModule (per-step seeded
  generator, finite-loss guard, logging, progress bar off, no checkpoints);
- bare: a hand-written loop calling VAE, text encoder, face encoder + projector,
  ControlNet, UNet, MSE, backward, AdamW step directly.

Per-step wall time is taken from batch start to batch end inside the loop (data loading
excluded on both sides), after warm-up steps; the two sides alternate over rounds and the
median step of each is compared.

    python -m benchmarks.step_overhead [--device cpu|cuda] [--steps 6] [--rounds 2] [--tiny]

A third timing, the UNet + ControlNet forward and backward alone on fixed inputs, gives the
step's non-UNet milliseconds of each side (printed before the RESULT line): the fixed costs
that stay when a GPU makes the UNet fast.

Ends with ``RESULT step_overhead_ratio=<ours/bare median step time> goal<=1.05``.
StoryMaker's step is measured by ``python -m benchmarks.storymaker_step``.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from benchmarks.lightning_timing import lightning_steps
from benchmarks.timing import Stopwatch
from ldm_ext.config import load_config
from ldm_ext.face import build_face_encoder
from ldm_ext.methods.instantfamily import InstantFamily
from ldm_ext.random_backbone import Widths, random_backbone

GOAL = 1.05
WARMUP = 2


def bare_steps(method: InstantFamily, batch: dict, steps: int, device: str) -> list[float]:
    """The same computation as ``InstantFamily.model_step`` + AdamW, written inline."""
    method.to(device).train()
    opt = method.configure_optimizers()["optimizer"]
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    sched, times, clock = method.backbone.scheduler, [], Stopwatch(device)
    for step in range(steps):
        clock.start()
        gen = torch.Generator(device=device).manual_seed(step)
        with torch.no_grad():
            latents = method.vae.encode(batch["pixel_values"]).latent_dist.sample(gen) * 0.18215
            ids = method.backbone.tokenizers[0](batch["caption"], padding="max_length",
                                                max_length=77, return_tensors="pt").input_ids
            text = method.text_encoders[0](ids.to(device))[0]
        stack, ctx = method.conditioning(text, batch["face_crops"], batch["face_boxes"],
                                         batch["face_valid"], tuple(latents.shape[-2:]))
        noise = torch.randn(latents.shape, generator=gen, device=device)
        t = torch.randint(0, 1000, (latents.shape[0],), generator=gen, device=device)
        noisy = sched.add_noise(latents, noise, t)
        down, mid = method.controlnet(noisy, t, stack, batch["control"],
                                      cross_attention_kwargs={"ctx": ctx}, return_dict=False)
        pred = method.unet(noisy, t, stack, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid,
                           cross_attention_kwargs={"ctx": ctx}).sample
        F.mse_loss(pred, noise).backward()
        torch.nn.utils.clip_grad_norm_(method.trainable_parameters().values(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(clock.elapsed())
    return times


def diffusion_steps(method: InstantFamily, batch: dict, steps: int, device: str) -> list[float]:
    """Seconds of the UNet + ControlNet forward and backward alone, on inputs made once (the
    embedding stack detached): what a step costs without VAE, text and face encoders,
    masks, noise, optimizer, Lightning and logging, its "non-UNet" part."""
    method.to(device).train()
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        latents = method.vae.encode(batch["pixel_values"]).latent_dist.sample(gen) * 0.18215
        ids = method.backbone.tokenizers[0](batch["caption"], padding="max_length",
                                            max_length=77, return_tensors="pt").input_ids
        stack, ctx = method.conditioning(method.text_encoders[0](ids.to(device))[0],
                                         batch["face_crops"], batch["face_boxes"],
                                         batch["face_valid"], tuple(latents.shape[-2:]))
    noisy = torch.randn_like(latents)
    t = torch.randint(0, 1000, (latents.shape[0],), device=device)
    times, clock = [], Stopwatch(device)
    for _ in range(steps):
        clock.start()
        down, mid = method.controlnet(noisy, t, stack, batch["control"],
                                      cross_attention_kwargs={"ctx": ctx}, return_dict=False)
        pred = method.unet(noisy, t, stack, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid,
                           cross_attention_kwargs={"ctx": ctx}).sample
        F.mse_loss(pred, noisy).backward()
        times.append(clock.elapsed())
    method.zero_grad(set_to_none=True)
    return times


def main() -> None:
    from datamodules.demo import random_batch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true",
                        help="32-wide models at 64 px: a smoke run (benchmarks/gpu.sh --tiny)")
    args = parser.parse_args()
    torch.manual_seed(0)
    # the paper's trainable set and 2-branch CFG, not the demo's extras (train_unet, identity guidance)
    cfg = load_config("configs/experiment/demo.yaml", ["method.face_weights=random",
                                                       "trainer.gradient_clip_val=1.0",
                                                       "method.train_unet=false",
                                                       "method.identity_guidance=false"])
    # SD1.5-shaped at a fifth of its widths: a CPU step takes about a second, so fixed
    # per-step costs are measured against real work rather than against timer noise
    widths = (dict(unet_channels=(32,) * 4, text_width=32, text_layers=1, text_heads=2,
                   vae_channels=(32,) * 4) if args.tiny else
              dict(unet_channels=(64, 128, 256, 256), text_width=256, text_layers=4,
                   text_heads=4, vae_channels=(32, 64, 64, 64)))
    backbone = random_backbone("sd15", Widths(**widths), controlnet=True)
    method = InstantFamily(cfg, backbone, build_face_encoder("facenet", weights="random"))
    batch = random_batch(2, 64 if args.tiny else 128)
    ours, bare, unet = [], [], []
    for _ in range(args.rounds):
        ours += lightning_steps(method, batch, args.steps + WARMUP, args.device)[WARMUP:]
        bare += bare_steps(method, batch, args.steps + WARMUP, args.device)[WARMUP:]
        unet += diffusion_steps(method, batch, args.steps + WARMUP, args.device)[WARMUP:]
    med_ours, med_bare = statistics.median(ours), statistics.median(bare)
    med_unet = statistics.median(unet)
    print(f"median step: ours {med_ours:.3f} s, bare loop {med_bare:.3f} s "
          f"({len(ours)} steps each)")
    print(f"non-UNet ms per step (step minus UNet + ControlNet forward and backward alone, "
          f"{med_unet * 1e3:.1f} ms): ours {(med_ours - med_unet) * 1e3:.1f}, "
          f"bare {(med_bare - med_unet) * 1e3:.1f}")
    print(f"RESULT step_overhead_ratio={med_ours / med_bare:.3f} goal<={GOAL}")


if __name__ == "__main__":
    main()
