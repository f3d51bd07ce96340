"""InstantFamily (Kim 2024, "InstantFamily: Masked Attention for Zero-shot Multi-ID Image
Generation"; docs/methods.md §1).

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
from ldm_ext.backbone import Backbone, load_backbone
from ldm_ext.losses import noise_loss
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

    @classmethod
    def from_config(cls, cfg) -> "InstantFamily":
        from ldm_ext.face import build_face_encoder

        encoder = build_face_encoder(cfg.method.face_encoder, weights=cfg.method.face_weights)
        return cls(cfg, load_backbone(cfg.model), encoder)

    def trainable_modules(self) -> dict[str, nn.Module]:
        modules = {"controlnet": self.controlnet, "face_projector": self.face_projector}
        if self.cfg.method.train_unet:
            modules["unet"] = self.unet
        elif self.cfg.method.train_unet_kv:
            for name, module in self.unet.named_modules():
                if name.endswith("attn2.to_k") or name.endswith("attn2.to_v"):
                    modules[f"unet.{name}"] = module
        return modules

    def frozen_modules(self) -> list[nn.Module]:
        return super().frozen_modules() + [self.face_encoder]

    # ----- conditioning ------------------------------------------------------------------
    def face_tokens(self, crops: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """crops (B, N, 3, S, S) in [-1, 1], valid (B, N) -> (B, N, L²+1, D) face tokens.

        Only valid slots go through the face encoder (empty ones stay zero, as Eq. 4-5's
        stack zeroes them anyway): with 4 slots and one or two faces per image, encoding
        the empty crops was most of a demo step's CPU time."""
        with torch.no_grad():
            feats = self.face_encoder.encode(crops[valid])  # (M, ...) for M valid slots
        projected = self.face_projector(feats.global_.float(), feats.local.float())
        tokens = projected.new_zeros(*valid.shape, *projected.shape[1:])  # (B, N, L²+1, D)
        tokens[valid] = projected
        return tokens

    def conditioning(self, text: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor,
                     valid: torch.Tensor, latent_hw: tuple[int, int]):
        """Embedding stack (B, 77 + N(L²+1), D) and the per-batch attention context."""
        stack = stack_embeddings(text, self.face_tokens(crops, valid).to(text.dtype), valid)
        layout = TokenLayout(text.shape[1], crops.shape[1], self.tokens_per_face)
        masks = build_face_masks(boxes, valid, layout, latent_hw,
                                 num_levels=self.backbone.num_levels,
                                 mode=self.cfg.method.mask_mode,
                                 margin=self.cfg.method.mask_margin)
        return stack, AttentionContext(face_masks=masks, latent_hw=latent_hw)

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, stack: torch.Tensor,
                      ctx: AttentionContext, control: torch.Tensor,
                      added: dict | None = None) -> torch.Tensor:
        """ControlNet residuals into the UNet, both attending to the embedding stack;
        ``added``: SDXL's extra conditioning (``added_cond_kwargs``)."""
        kwargs = {"ctx": ctx}
        down, mid = self.controlnet(noisy, t, encoder_hidden_states=stack,
                                    controlnet_cond=control.to(noisy.dtype),
                                    added_cond_kwargs=added,
                                    cross_attention_kwargs=kwargs, return_dict=False)
        return self.unet(noisy, t, encoder_hidden_states=stack,
                         down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, added_cond_kwargs=added,
                         cross_attention_kwargs=kwargs).sample

    # ----- training --------------------------------------------------------------------
    def model_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Noise-prediction loss of one batch (the paper trains with L_noise only)."""
        latents = self.encode_latents(batch["pixel_values"], generator)
        text, pooled = self.encode_text(self.drop_captions(batch["caption"], generator))
        stack, ctx = self.conditioning(text, batch["face_crops"], batch["face_boxes"],
                                       batch["face_valid"], tuple(latents.shape[-2:]))
        noisy, t, target = self.noised_latents(latents, generator)
        added = self.added_cond_kwargs(pooled, tuple(batch["pixel_values"].shape[-2:]))
        pred = self.predict_noise(noisy, t, stack, ctx, batch["control"], added)
        return {"loss": noise_loss(pred, target)}

    # ----- hooks ---------------------------------------------------------------------------
    def idforge_parts(self) -> str:
        return ("The ControlNet (and a trained UNet) load in diffusers but were trained "
                "with masked cross-attention over per-face tokens (Eq. 6-8) from the face "
                "projector in adapters.safetensors: generating with identities needs "
                "idforge; a plain ControlNet pipeline runs them on text and pose only.")

    def identity_key_groups(self, num_keys: int, num_ids: int) -> list[slice]:
        """Text tokens, then each identity's L²+1 face tokens (Eq. 4-5)."""
        layout = TokenLayout(num_keys - num_ids * self.tokens_per_face, num_ids,
                             self.tokens_per_face)
        return [slice(0, layout.num_text)] + [layout.face_slice(k) for k in range(num_ids)]
