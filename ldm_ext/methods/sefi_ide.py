"""SeFi-IDE ("Beyond Inserting", arXiv 2402.00631; docs/methods.md §2).

One identity is fitted from one photo with the text-to-image model frozen: the stage-token
module (``adapters/stage_tokens.py``) maps the pseudo-word ``V*`` to five (key, value)
token pairs, one per fifth of the timesteps (Sec. III-C). For a timestep of stage i the
prompt is encoded twice by the frozen text encoder(s), ``V*`` read as P_i^K for the key
condition and as P_i^V for the value condition, and every cross-attention layer takes its
keys from the first and its values from the second (the split K/V processor). The loss is
L_KV (Eq. 5, the noise MSE over the photo, not the canvas a shrunk view is pasted on)
+ λ·L_att (Eq. 6), L_att the face-wise attention loss (Eq. 4,
Alg. 1), computed in the same UNet pass: each cross-attention layer's own map (keys of the
training prompt, y_t = "a photo of the face of V*") and, as a detached probe of the same
queries, the map against the keys of y_r = "a photo of the face of person".
"""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from ldm_ext.adapters.pseudo_words import PLACEHOLDER, encode, word_embedding
from ldm_ext.adapters.stage_tokens import METADATA_KEY, StageTokens, stage_of
from ldm_ext.attention import AttentionContext, AttentionStore, install_processors
from ldm_ext.backbone import Backbone
from ldm_ext.losses import face_attention_loss, noise_loss
from ldm_ext.methods.base import IdentityMethod

REFERENCE = "reference"  # probe tag of y_r's maps in the attention store


def photo_weights(mask: torch.Tensor | None,
                  latent_hw: tuple[int, int]) -> torch.Tensor | None:
    """(B, 1, h, w) weights of L_KV: the pasted photo of a randomly scaled view (``mask``
    (B, 1, H, W) of ``datamodules/single_image.py``), normalised to mean 1 per sample so
    every view weighs the same; None (the whole image) without a mask. The grey canvas
    around a shrunk photo is padding, not the identity: fitted, V* would learn it."""
    if mask is None:
        return None
    region = F.interpolate(mask.float(), size=latent_hw, mode="area")  # (B, 1, h, w)
    return region / region.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


class LayerMeans(AttentionStore):
    """The maps of Alg. 1: per tag (the layers' own maps "", a probe's "<tag>") and head
    count, every recorded layer's softmax resized to ``size`` x ``size`` and averaged over
    the layers, with gradients. Bilinear resizing is linear, so the maps of layers on the
    same query grid are summed as they come and each sum is resized once: the same average
    for a fraction of the copies and resizes of keeping every layer's map. (A
    gradient-checkpoint recomputation adds again after the loss was taken, unread.)"""

    def __init__(self, layers, size: int = 32) -> None:
        super().__init__(layers, size)
        self.sums: dict[tuple[str, int, int, int], torch.Tensor] = {}  # (B, heads, Q, K)

    def record(self, name: str, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """probs (B, heads, Q = h*w, K) of layer ``name`` ("<layer>" or "<layer>:<tag>")."""
        key = (name.partition(":")[2], probs.shape[1], *hw)
        self.sums[key] = probs if key not in self.sums else self.sums[key] + probs
        self.counts[key[:2]] = self.counts.get(key[:2], 0) + 1

    def clear(self) -> None:
        super().clear()
        self.sums.clear()

    def means(self, tag: str = "") -> list[torch.Tensor]:
        """Per head count (ascending): (B, heads, K, size, size) the layers' mean map."""
        found: dict[int, torch.Tensor] = {}
        for (kind, heads, h, w), total in self.sums.items():
            if kind != tag:
                continue
            maps = total.transpose(2, 3).unflatten(-1, (h, w)).flatten(0, 1)  # (B*heads, K, h, w)
            if (h, w) != (self.size, self.size):
                maps = F.interpolate(maps, size=(self.size, self.size), mode="bilinear",
                                     align_corners=False)
            maps = maps.unflatten(0, (total.shape[0], heads))  # (B, heads, K, size, size)
            found[heads] = maps if heads not in found else found[heads] + maps
        return [found[h] / self.counts[(tag, h)] for h in sorted(found)]


class SeFiIDE(IdentityMethod):
    """Fits one identity: only ``stage_tokens`` trains (its word P stays the initializer's).
    ``conditions`` and ``predict_noise`` are shared with the pipeline."""

    def __init__(self, cfg, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        hp = cfg.method
        word, self.stand_in = word_embedding(backbone, hp.initializer)
        self.stage_tokens = StageTokens(word, hp.num_stages, hp.width, hp.heads, hp.ff_mult)
        install_processors(self.unet)
        self._references: dict[tuple, torch.Tensor] = {}  # y_r encodings, by caption
        self.freeze_all_but_trainable()

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"stage_tokens": self.stage_tokens}

    def freeze_all_but_trainable(self) -> None:
        """Only the module trains (Sec. III-C); P is saved with it but stays fixed."""
        super().freeze_all_but_trainable()
        self.stage_tokens.word.requires_grad_(False)

    def idforge_parts(self) -> str:
        return ("Nothing here loads in plain diffusers: the identity is per-stage key and "
                "value tokens for V*, read through split key/value cross-attention, which "
                "needs idforge (the base model itself is unchanged).")

    # ----- conditioning ------------------------------------------------------------------
    def stages(self, timesteps: torch.Tensor, num_stages: int | None = None) -> torch.Tensor:
        """(B,) stage index of each timestep (stage 0 = the first fifth of denoising);
        ``num_stages``: the split of identity tokens fitted with another count than this
        run's (default ``method.num_stages``)."""
        return stage_of(timesteps, num_stages or self.cfg.method.num_stages,
                        self.backbone.scheduler.config.num_train_timesteps)

    def conditions(self, prompts: list[str], identities: list[torch.Tensor],
                   stages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Key and value conditions of each prompt at its stage (Sec. III-C, Fig. 3).

        identities[b] (K_b, S, 2, D): the tokens of prompt b's identities; stages (B,).
        One encoder call of 2B prompts, gradients reaching the tokens when enabled.
        Returns keys (B, 77, D_text) (V* -> P_i^K), values (B, 77, D_text) (V* -> P_i^V) and
        the pooled embedding of the value condition (SDXL; None for SD1.5)."""
        picked = [ids[:, s] for ids, s in zip(identities, stages.tolist())]  # (K_b, 2, D)
        tokens = [p[:, 0] for p in picked] + [p[:, 1] for p in picked]
        hidden, pooled = encode(self.backbone, prompts + prompts, tokens, self.stand_in)
        keys, values = hidden.chunk(2)
        return keys, values, None if pooled is None else pooled.chunk(2)[1]

    def reference(self, captions: list[str]) -> torch.Tensor:
        """(B, 77, D_text) encodings of y_r, each caption with ``V*`` read as the
        initializer word, without gradients; cached, as captions repeat every step."""
        word, device = self.cfg.method.initializer, self.device
        for caption in set(captions) - {c for c, d in self._references if d == device}:
            text, _ = self.encode_text([PLACEHOLDER.sub(word, caption)])
            self._references[(caption, device)] = text.detach()
        return torch.cat([self._references[(c, device)] for c in captions])

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, keys: torch.Tensor,
                      ctx: AttentionContext, added: dict | None = None) -> torch.Tensor:
        """UNet with keys from ``keys`` and values from ``ctx.value_states``."""
        return self.unet(noisy, t, encoder_hidden_states=keys, added_cond_kwargs=added,
                         cross_attention_kwargs={"ctx": ctx}).sample

    def identity_tokens(self) -> torch.Tensor:
        """(S, 2, D) this module's identity tokens, without gradients."""
        with torch.no_grad():
            return self.stage_tokens()

    # ----- training --------------------------------------------------------------------
    def model_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """L = L_KV + λ L_att (Eq. 5-6) of one batch of augmented views of the photo."""
        pixels, lam = batch["pixel_values"], self.cfg.method.attention_loss_weight
        latents = self.encode_latents(pixels, generator)
        noisy, t, target = self.noised_latents(latents, generator)
        captions = self.drop_captions(batch["caption"], generator)
        tokens = self.stage_tokens()[None]  # (1, S, 2, D): the one identity
        keys, values, pooled = self.conditions(captions, [tokens] * len(captions),
                                               self.stages(t))
        store = self._loss_store() if lam else None
        ctx = AttentionContext(value_states=values, store=store,
                               probe_states={REFERENCE: self.reference(captions)} if lam else None)
        added = self.added_cond_kwargs(pooled, tuple(pixels.shape[-2:]))
        loss_kv = noise_loss(self.predict_noise(noisy, t, keys, ctx, added), target,
                             photo_weights(batch.get("mask"), tuple(latents.shape[-2:])))
        if store is None:
            return {"loss": loss_kv, "noise": loss_kv}
        loss_att = self.attention_loss(store)
        return {"loss": loss_kv + lam * loss_att, "noise": loss_kv, "attention": loss_att}

    def _loss_store(self) -> LayerMeans:
        """Averages every UNet cross-attention layer's map and its y_r probe (Alg. 1)."""
        return LayerMeans(lambda n: self.attention_layers(n.removesuffix(f":{REFERENCE}")),
                          size=self.cfg.method.attention_map_size)

    @staticmethod
    def attention_loss(store: LayerMeans) -> torch.Tensor:
        """Eq. 4: the layers' own mean maps (A_t) vs those of their y_r probes (A_r)."""
        return face_attention_loss(store.means(), store.means(REFERENCE))

    # ----- the identity file -------------------------------------------------------------
    def save_trainable(self, path, metadata: dict[str, str] | None = None) -> None:
        """The identity file: module and word P by name, with the module's sizes and the
        run's config as metadata (``ldm_ext/pipelines/sefi_ide.py`` reads them back)."""
        extra = {METADATA_KEY: json.dumps(self.stage_tokens.hparams),
                 "config": OmegaConf.to_yaml(self.cfg)}
        super().save_trainable(path, {**(metadata or {}), **extra})
