"""InstantFamily (papers/instantfamily.txt; METHODS.md §1).

Frozen SD UNet + a ControlNet initialised from it (trained) + a face projector (trained).
The conditioning of every cross-attention layer of both networks is the multimodal
embedding stack (Eq. 4-5), attended through masked cross-attention (Eq. 6-8) whose face
masks come from the face boxes of the batch.
"""
from __future__ import annotations

import torch
from torch import nn

from ldm_ext.adapters.embedding_stack import FaceProjector, stack_embeddings
from ldm_ext.attention import (AttentionContext, TokenLayout, build_face_masks,
                               install_processors)
from ldm_ext.backbone import Backbone
from ldm_ext.losses import noise_loss, noise_target
from ldm_ext.methods.base import IdentityMethod


class InstantFamily(IdentityMethod):
    """Training module; ``conditioning`` and ``predict_noise`` are shared with the pipeline."""

    def __init__(self, cfg, backbone: Backbone, face_encoder: nn.Module) -> None:
        super().__init__(cfg, backbone)
        if backbone.controlnet is None:
            raise ValueError("InstantFamily needs a ControlNet: set model.controlnet "
                             "(from_unet, or a pretrained OpenPose ControlNet)")
        self.controlnet = backbone.controlnet
        self.face_encoder = face_encoder
        token_dim = backbone.unet.config.cross_attention_dim
        self.face_projector = FaceProjector(face_encoder.global_dim, face_encoder.local_dim,
                                            token_dim)
        self.tokens_per_face = face_encoder.local_size**2 + 1
        install_processors(self.unet)
        install_processors(self.controlnet, prefix="controlnet.")  # store names stay unique
        self.freeze_all_but_trainable()

    def trainable_modules(self) -> dict[str, nn.Module]:
        modules = {"controlnet": self.controlnet, "face_projector": self.face_projector}
        if self.cfg.method.train_unet_kv:
            for name, module in self.unet.named_modules():
                if name.endswith("attn2.to_k") or name.endswith("attn2.to_v"):
                    modules[f"unet.{name}"] = module
        return modules

    def frozen_modules(self) -> list[nn.Module]:
        return super().frozen_modules() + [self.face_encoder]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass of ControlNet and UNet."""
        for model in (self.controlnet, self.unet):
            if enabled:
                model.enable_gradient_checkpointing()
            else:
                model.disable_gradient_checkpointing()

    # ----- conditioning ------------------------------------------------------------------
    def face_tokens(self, crops: torch.Tensor) -> torch.Tensor:
        """crops (B, N, 3, S, S) in [-1, 1] -> (B, N, L²+1, D) projected face tokens."""
        b, n = crops.shape[:2]
        with torch.no_grad():
            feats = self.face_encoder.encode(crops.flatten(0, 1))
        tokens = self.face_projector(feats.global_.float(), feats.local.float())
        return tokens.unflatten(0, (b, n))

    def conditioning(self, text: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor,
                     valid: torch.Tensor, latent_hw: tuple[int, int]):
        """Embedding stack (B, 77 + N(L²+1), D) and the per-batch attention context."""
        stack = stack_embeddings(text, self.face_tokens(crops).to(text.dtype), valid)
        layout = TokenLayout(text.shape[1], crops.shape[1], self.tokens_per_face)
        masks = build_face_masks(boxes, valid, layout, latent_hw,
                                 num_levels=self.backbone.num_levels,
                                 mode=self.cfg.method.mask_mode,
                                 margin=self.cfg.method.mask_margin)
        return stack, AttentionContext(face_masks=masks, latent_hw=latent_hw)

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, stack: torch.Tensor,
                      ctx: AttentionContext, control: torch.Tensor) -> torch.Tensor:
        """ControlNet residuals into the UNet, both attending to the embedding stack."""
        kwargs = {"ctx": ctx}
        down, mid = self.controlnet(noisy, t, encoder_hidden_states=stack,
                                    controlnet_cond=control.to(noisy.dtype),
                                    cross_attention_kwargs=kwargs, return_dict=False)
        return self.unet(noisy, t, encoder_hidden_states=stack,
                         down_block_additional_residuals=down,
                         mid_block_additional_residual=mid,
                         cross_attention_kwargs=kwargs).sample

    # ----- training --------------------------------------------------------------------
    def drop_captions(self, captions: list[str], generator: torch.Generator) -> list[str]:
        """Replace each caption by "" with probability empty_prompt_prob (Sec. 4.3)."""
        draws = torch.rand(len(captions), generator=generator, device=generator.device)
        keep = (draws >= self.cfg.method.empty_prompt_prob).tolist()
        return [c if k else "" for c, k in zip(captions, keep)]

    def encode_latents(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            return dist.sample(generator) * self.vae.config.scaling_factor

    def model_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Noise-prediction loss of one batch (the paper trains with L_noise only)."""
        latents = self.encode_latents(batch["pixel_values"], generator)
        text, _ = self.encode_text(self.drop_captions(batch["caption"], generator))
        stack, ctx = self.conditioning(text, batch["face_crops"], batch["face_boxes"],
                                       batch["face_valid"], tuple(latents.shape[-2:]))
        noise = torch.randn(latents.shape, generator=generator, device=latents.device,
                            dtype=latents.dtype)
        scheduler = self.backbone.scheduler
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                          generator=generator, device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = self.predict_noise(noisy, t, stack, ctx, batch["control"])
        return {"loss": noise_loss(pred, noise_target(scheduler, latents, noise, t))}

    # ----- samples ---------------------------------------------------------------------
    def sample_images(self, identities: torch.Tensor, generator: torch.Generator):
        """Grid cells for the sample callback: a legend row (per column, the control image
        with its identities framed in their slot colours, see ``control_legend``), then
        every sample prompt with the first k identities for each k in sample_num_ids.
        Returns (images, columns)."""
        from ldm_ext.pipelines.instantfamily import InstantFamilyPipeline, control_legend

        method, size = self.cfg.method, (self.cfg.data.resolution,) * 2
        pipe, was_training = InstantFamilyPipeline(self), self.training
        self.eval()
        legend = [control_legend(identities[:k], size) for k in method.sample_num_ids]
        images = [pipe(prompt, identities[:k], size=size, steps=method.sample_steps,
                       guidance=method.guidance_scale, generator=generator, progress=False)
                  for prompt in method.sample_prompts for k in method.sample_num_ids]
        self.train(was_training)
        return legend + images, len(method.sample_num_ids)
