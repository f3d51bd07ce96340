"""PortraitBooth (Peng et al. 2023, arXiv 2312.06354; docs/methods.md §4).

The UNet and the STEA MLP train. Identity tokens of the caption are augmented with
shallow face features of the subject's reference face (STEA, Eq. 4); for t <= R_t the
one-step x̂0 is decoded, its face cropped with the training box and compared with the
reference through the face encoder (DIP, Eq. 5-6); the cross-attention maps of identity
and expression tokens are pulled into the face mask and truncated at β / γ (ECAC, Eq. 7).
Loss: L = L_loc + L_noise + L_id (Eq. 8).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldm_ext.adapters.stea import STEA, augment_tokens
from ldm_ext.attention import AttentionContext, AttentionStore, install_processors
from ldm_ext.backbone import Backbone, load_backbone
from ldm_ext.face.types import FaceFeatures
from ldm_ext.identity_loss import decode_faces, x0_identity_loss
from ldm_ext.losses import noise_loss
from ldm_ext.methods.base import IdentityMethod
from ldm_ext.methods.portraitbooth_losses import localization_terms
from ldm_ext.word_tokens import word_positions


class PortraitBooth(IdentityMethod):
    """Training module; ``face_features``, ``text_conditioning`` and ``predict_noise`` are
    shared with ``PortraitBoothPipeline``."""

    def __init__(self, cfg, backbone: Backbone, face_encoder: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.face_encoder = face_encoder
        self.stea = STEA(backbone.unet.config.cross_attention_dim, face_encoder.shallow_dim)
        install_processors(self.unet)  # ECAC reads maps through the store (Eq. 7)
        self.freeze_all_but_trainable()

    @classmethod
    def from_config(cls, cfg) -> "PortraitBooth":
        from ldm_ext.face import build_face_encoder

        hp = cfg.method
        block = {} if hp.shallow_block == "auto" else {"shallow_block": hp.shallow_block}
        encoder = build_face_encoder(hp.face_encoder, weights=hp.face_weights, **block)
        return cls(cfg, load_backbone(cfg.model), encoder)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "stea": self.stea}

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoders, self.face_encoder]

    def idforge_parts(self) -> str:
        return ("The fine-tuned UNet loads in any diffusers SD pipeline (text prompts); "
                "the identities (STEA: FaceNet features fused into the identity words' "
                "tokens) and the multi-subject region composition need idforge.")

    def batch_identities(self, batch: dict) -> torch.Tensor | None:
        """The reference faces of the batch's valid subjects (K, 3, S, S) in [-1, 1]."""
        return batch["reference"][batch["face_valid"]].detach().cpu()

    # ----- conditioning (Eq. 4) -----------------------------------------------------------
    @torch.no_grad()
    def face_features(self, crops: torch.Tensor) -> FaceFeatures:
        """crops (..., 3, S, S) in [-1, 1] -> features of the flattened crops (no grad)."""
        return self.face_encoder.encode(crops.flatten(0, -4).to(self.device))

    def text_conditioning(self, prompts: list[str], shallow: torch.Tensor | None,
                          valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 4: text (B, 77, D) with occurrence k of an identity word augmented by subject
        k's shallow features ``shallow`` (B, N, F) where ``valid`` (B, N); pooled or None."""
        text, pooled = self.encode_text(prompts)
        if shallow is None or not bool(valid.any()):
            return text, pooled
        found = word_positions(self.backbone.tokenizers[0], prompts,
                               list(self.cfg.method.identity_words))
        return augment_tokens(text, self.stea, shallow, found, valid), pooled

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                      ctx: AttentionContext, added: dict | None = None) -> torch.Tensor:
        """UNet output for the (augmented) text; ``ctx.store`` records the maps it wants.
        A sampling run passes one ``ctx`` to every step, so that each cross-attention layer
        projects the run's text to keys and values once (``attention/reuse.py``)."""
        return self.unet(noisy, t, encoder_hidden_states=text, added_cond_kwargs=added,
                         cross_attention_kwargs={"ctx": ctx}).sample

    # ----- training ------------------------------------------------------------------------
    def model_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Eq. 8: L = L_loc + L_noise + L_id for one batch (terms logged apart)."""
        latents = self.encode_latents(batch["pixel_values"], generator)
        captions, full = self.condition_modes(batch["caption"], generator)
        b, n = batch["face_valid"].shape
        faces = self.face_features(batch["reference"])
        shallow = faces.shallow.unflatten(0, (b, n))  # (B, N, F)
        text, pooled = self.text_conditioning(captions, shallow,
                                              batch["face_valid"] & full[:, None])
        noisy, t, target = self.noised_latents(latents, generator)
        weights = self.noise_weights(batch, tuple(latents.shape[-2:]), generator)
        hp = self.cfg.method
        entries = (ecac_entries(self, captions, batch["face_valid"])
                   if hp.loc_identity_weight or hp.loc_expression_weight else None)
        store = (AttentionStore(self.attention_layers, hp.attention_size, keys=entries.keys)
                 if entries is not None else None)  # only the tokens Eq. 7 reads
        added = self.added_cond_kwargs(pooled, tuple(batch["pixel_values"].shape[-2:]))
        ctx = AttentionContext(store=store, latent_hw=tuple(latents.shape[-2:]))
        pred = self.predict_noise(noisy, t, text, ctx, added)
        losses = {"noise": noise_loss(pred, target, weights)}
        counts = {}
        if hp.loc_identity_weight or hp.loc_expression_weight:
            losses["loc"], counts["ecac_empty_masks"] = self.ecac_loss(store, entries, batch)
        if hp.id_weight:  # only samples whose identity word carries subject 0's face (Eq. 4)
            named = torch.tensor([bool(found) for found in word_positions(
                self.backbone.tokenizers[0], captions, list(hp.identity_words))],
                dtype=torch.bool, device=self.device)
            need = (t <= hp.dip_max_timestep) & full & batch["face_valid"][:, 0] & named
            reference = self._id_features(faces).unflatten(0, (b, n))[:, 0]  # (B, D)
            losses["id"] = hp.id_weight * self.dip_loss(noisy, pred, t, reference,
                                                       batch["face_boxes"][:, 0], need)
        return {"loss": sum(losses.values()), **losses, **counts}

    def condition_modes(self, captions: list[str], generator: torch.Generator,
                        ) -> tuple[list[str], torch.Tensor]:
        """Sec. 5.1: per sample u ~ U(0, 1): u < empty_prompt_prob -> "" (unconditional),
        u < + text_only_prob -> caption without face features, else fully conditioned.
        Returns (captions, full (B,) bool)."""
        hp = self.cfg.method
        u = torch.rand(len(captions), generator=generator, device=generator.device).cpu()
        empty = (u < hp.empty_prompt_prob).tolist()
        full = u >= hp.empty_prompt_prob + hp.text_only_prob
        return [("" if e else c) for c, e in zip(captions, empty)], full.to(self.device)

    def noise_weights(self, batch: dict, latent_hw: tuple[int, int],
                      generator: torch.Generator) -> torch.Tensor | None:
        """(B, 1, h, w) per-pixel weights of the noise loss: the face mask for a
        ``face_loss_prob`` share of the samples, 1 elsewhere, each sample's weights
        normalised to mean 1 so every sample weighs the same; None when no sample is
        restricted (a sample whose mask is empty at latent size keeps the whole image)."""
        b = len(batch["caption"])
        chosen = torch.rand(b, generator=generator, device=generator.device).to(self.device) \
            < self.cfg.method.face_loss_prob
        valid = batch["face_valid"][:, :, None, None].to(batch["face_masks"].dtype)
        region = (batch["face_masks"] * valid).amax(1, keepdim=True)  # (B, 1, R, R)
        region = F.interpolate(region, size=latent_hw, mode="area")  # (B, 1, h, w)
        chosen = chosen & (region.flatten(1).sum(1) > 0)
        if not bool(chosen.any()):
            return None
        weights = torch.where(chosen[:, None, None, None], region, torch.ones_like(region))
        return weights / weights.mean(dim=(1, 2, 3), keepdim=True)

    # ----- DIP (Eq. 5-6) --------------------------------------------------------------------
    def _id_features(self, feats: FaceFeatures) -> torch.Tensor:
        return feats.global_ if self.cfg.method.id_features == "global" else feats.shallow

    def dip_loss(self, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor,
                 reference: torch.Tensor, boxes: torch.Tensor, need: torch.Tensor,
                 ) -> torch.Tensor:
        """Eq. 6 averaged over the batch: 1 − cos(φ(f), φ(x̂0^f)) for the samples of
        ``need`` (t <= R_t, face conditioned, a face), 0 for the others. Only those samples
        are decoded. reference (B, D) φ(f); boxes (B, 4) normalised training boxes."""
        index = need.nonzero().flatten()
        if len(index) == 0:
            return pred.new_zeros((), dtype=torch.float32)
        losses = x0_identity_loss(
            self.backbone.scheduler, self.vae, self.backbone.vae_scale,
            lambda faces: self._id_features(self.face_encoder(faces)),
            self.face_encoder.input_size, noisy[index], pred[index], t[index],
            reference[index], boxes[index], self._window_margin())  # (E,)
        return losses.sum() / len(need)

    def decode_faces(self, z0: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """x̂0^f: ẑ0 (E, C, h, w) decoded (Eq. 5's D) and cropped at the normalised boxes
        (E, 4) -> (E, 3, S, S) at the face encoder's input size, differentiably. ``window``
        decodes each face's latent box plus ``dip_window_margin`` latents of context
        instead of the whole latent (the decoder's cost follows the area)."""
        return decode_faces(self.vae, z0, boxes, self.backbone.vae_scale,
                            self.face_encoder.input_size, self._window_margin())

    def _window_margin(self) -> int | None:
        """Latents of context around each face box (``window`` decode), None: decode all."""
        hp = self.cfg.method
        return hp.dip_window_margin if hp.dip_decode == "window" else None

    # ----- ECAC (Eq. 7) ---------------------------------------------------------------------
    def ecac_loss(self, store: AttentionStore | None, entries: "EcacEntries | None",
                  batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 7 over the recorded cross-attention layers, averaged over the batch: λ times
        the mean over a sample's identity tokens (occurrence k against face mask k) plus μ
        times the mean over its emotion tokens (against the union of its face masks); a
        sample without such tokens adds 0. ``store`` kept the maps of ``entries.keys``.

        A token whose mask is empty while its face is valid (a parsing failure) adds 0
        under ``ecac_empty_mask: skip``; ``paper`` keeps Eq. 7's terms for it. Returns the
        loss and the number of samples with such a token."""
        zero = torch.zeros((), device=self.device)
        if entries is None or store is None or not store.maps:
            return zero, zero
        s, valid = store.size, batch["face_valid"][:, :, None, None].to(batch["face_masks"].dtype)
        masks = F.interpolate(batch["face_masks"].flatten(0, 1)[:, None], size=(s, s),
                              mode="area").view(*valid.shape[:2], s, s) * valid  # (B, N, S, S)
        masks = torch.cat([masks, masks.amax(1, keepdim=True)], dim=1)  # slot N: the union
        maps = torch.stack([m[entries.rows, :, entries.columns].float().mean(1)
                            for m in store.maps.values()])  # (layers, E, S, S)
        regions = masks[entries.rows, entries.slots]  # (E, S, S)
        terms = localization_terms(maps, regions, entries.caps)
        present = regions.flatten(1).amax(1) > 0  # (E,)
        empty = entries.rows[~present].unique().numel()
        if self.cfg.method.ecac_empty_mask == "paper":
            present = torch.ones_like(present)
        loss = (terms * entries.weights * present).sum() / len(valid)
        return loss, torch.tensor(float(empty), device=self.device)


@dataclass
class EcacEntries:
    """Eq. 7's entries, one per token piece: sample ``rows``, the token's column among
    ``keys`` (the positions the store keeps), the mask ``slots`` (N: the union), ``caps``
    (β or γ) and ``weights`` (λ or μ over the sample's count of such tokens), all (E,)."""

    keys: list[int]
    rows: torch.Tensor
    columns: torch.Tensor
    slots: torch.Tensor
    caps: torch.Tensor
    weights: torch.Tensor


def ecac_entries(method: PortraitBooth, captions: list[str],
                 valid: torch.Tensor) -> EcacEntries | None:
    """The entries of Eq. 7 for a batch: identity occurrence k (a valid face k) -> mask k,
    cap β, weight λ / count; emotion words -> the union mask, cap γ, weight μ / count;
    None when no caption holds such a token."""
    hp, tokenizer = method.cfg.method, method.backbone.tokenizers[0]
    num_slots, flags = valid.shape[1], valid.tolist()
    identity = word_positions(tokenizer, captions, list(hp.identity_words))
    emotion = word_positions(tokenizer, captions, list(hp.emotion_words))
    out: list[tuple[int, int, int, float, float]] = []
    for b in range(len(captions)):
        ids = [(p, k) for k, found in enumerate(identity[b][:num_slots]) if flags[b][k]
               for p in found]
        out += [(b, p, k, hp.identity_cap, hp.loc_identity_weight / len(ids)) for p, k in ids]
        emo = [p for found in emotion[b] for p in found] if any(flags[b]) else []
        out += [(b, p, num_slots, hp.expression_cap, hp.loc_expression_weight / len(emo))
                for p in emo]
    if not out:
        return None
    rows, tokens, slots, caps, weights = zip(*out)
    keys = sorted(set(tokens))
    column = {token: i for i, token in enumerate(keys)}

    def tensor(values) -> torch.Tensor:
        return torch.tensor(values, device=method.device)

    return EcacEntries(keys, tensor(rows), tensor([column[t] for t in tokens]), tensor(slots),
                       tensor(caps), tensor(weights))
