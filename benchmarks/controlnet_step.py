"""The InstantFamily-shaped ControlNet training step whose peak memory ``step_memory.py``
compares and ``memory_plan.py`` extrapolates: its models, inputs, AdamW and the step itself
(their CPU peak: ``ldm_ext.host_memory.MemoryPeak`` of ``rss_bytes``).

The models have SD1.5's shape (``ldm_ext.random_backbone``'s SD1.5 UNet: 2 layers per
block, 8-wide heads, 768-wide text; ``ControlNetModel.from_unet``) with channel widths
``width x (1, 2, 4, 4)``: SD1.5 is width 320. The step is a trainable ControlNet into the
frozen UNet, both with our attention processors and 4-face masks (multiply mode, 77 text +
4 x 10 face tokens), MSE on the noise, backward, AdamW step.
"""
from __future__ import annotations

# glibc serves allocations above this size with mmap and unmaps them when freed, so the
# resident memory follows the tensors alive, as CUDA's allocated bytes do (glibc's default
# threshold grows with use up to 32 MiB and then keeps freed tensors resident).
MMAP_THRESHOLD = 1 << 20


def build_models(width: int, device: str):
    """SD1.5-shaped UNet and its ControlNet at `width`, our processors installed."""
    import torch
    from diffusers import ControlNetModel

    from ldm_ext.attention import install_processors
    from ldm_ext.random_backbone import Widths, random_unet

    torch.manual_seed(0)
    widths = Widths(unet_channels=tuple(width * m for m in (1, 2, 4, 4)))
    unet = random_unet("sd15", widths, sample_size=64)
    controlnet = ControlNetModel.from_unet(unet)
    install_processors(unet)
    install_processors(controlnet, prefix="controlnet.")
    return unet.to(device), controlnet.to(device)


def step_inputs(batch: int, device: str) -> dict:
    """One batch: noisy latents (B, 4, 64, 64), timesteps, noise target, embedding stack
    (B, 117, 768), pose image (B, 3, 512, 512) and the 4 faces' attention context."""
    import torch

    from ldm_ext.attention import AttentionContext, TokenLayout, build_face_masks

    layout = TokenLayout(num_text=77, num_slots=4, tokens_per_face=10)
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.05, 0.10, 0.25, 0.35], [0.30, 0.15, 0.50, 0.40],
                          [0.55, 0.10, 0.75, 0.35], [0.78, 0.20, 0.98, 0.45]])  # (N, 4) xyxy
    tensors = {"noisy": torch.randn(batch, 4, 64, 64, generator=gen),
               "target": torch.randn(batch, 4, 64, 64, generator=gen),
               "timesteps": torch.randint(0, 1000, (batch,), generator=gen),
               "stack": torch.randn(batch, layout.total, 768, generator=gen),
               "control": torch.rand(batch, 3, 512, 512, generator=gen)}
    masks = build_face_masks(boxes.expand(batch, -1, -1).to(device),
                             torch.ones(batch, 4, dtype=torch.bool, device=device), layout,
                             (64, 64))
    return {**{k: v.to(device) for k, v in tensors.items()},
            "ctx": AttentionContext(face_masks=masks, latent_hw=(64, 64))}


def allocated_adamw(controlnet):
    """AdamW over the ControlNet (put in train mode) with its state allocated, as after a
    first step."""
    import torch

    controlnet.train()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    for param in controlnet.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def train_step(unet, controlnet, optimizer, inputs: dict, ours: bool, device: str) -> None:
    """ControlNet -> UNet -> noise MSE -> backward -> AdamW step (bf16 autocast in ours)."""
    import torch
    import torch.nn.functional as F

    kwargs = {"encoder_hidden_states": inputs["stack"],
              "cross_attention_kwargs": {"ctx": inputs["ctx"]}}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=ours):
        down, mid = controlnet(inputs["noisy"], inputs["timesteps"],
                               controlnet_cond=inputs["control"], return_dict=False, **kwargs)
        pred = unet(inputs["noisy"], inputs["timesteps"], down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, **kwargs).sample
    F.mse_loss(pred.float(), inputs["target"]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
