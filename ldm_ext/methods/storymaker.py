"""StoryMaker (Zhou et al. 2024, "StoryMaker: Towards Holistic Consistent Characters in
Text-to-image Generation"; docs/methods.md §3).

Frozen SD/SDXL UNet (+ optional frozen pose ControlNet), frozen ArcFace and CLIP ViT-H/14.
Per character the PPR (Eq. 4-7) turns the face embedding, the CLIP tokens of the face crop
and of the character crop into L = 20 tokens; the image prompt c_i (background first) enters
every cross-attention layer through decoupled attention (Eq. 3) with trainable K_i / V_i;
LoRA through peft (Eq. 8). Loss: noise MSE weighted by 1 + 5 · person mask, plus λ times
the attention loss (Eq. 9-12) of the image-attention maps against the character masks, plus
an optional ID loss (off by default; ``id_loss``).

Batches mix one, two and three characters: the token groups of a sample's absent characters
are masked out of its image attention (``AttentionContext.image_mask``) and of its loss
(the official trainer flattens characters into the batch axis and needs batch 1).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ldm_ext.adapters.face_tokens import FaceIDPlusTokens
from ldm_ext.adapters.lora import add_lora, lora_modules
from ldm_ext.adapters.ppr import PositionalPerceiverResampler
from ldm_ext.adapters.released import (faceid_plusv2_targets, ip_adapter_plus_targets,
                                       load_released, storymaker_targets)
from ldm_ext.adapters.resampler import Resampler
from ldm_ext.attention import (AttentionContext, AttentionStore, decoupled_modules,
                               install_processors)
from ldm_ext.backbone import DTYPES, Backbone, load_backbone
from ldm_ext.identity_loss import x0_identity_loss
from ldm_ext.methods.base import IdentityMethod
from ldm_ext.methods.storymaker_encoders import (build_id_loss_encoder, build_identity_encoder,
                                                 clip_features, load_image_encoder)
from ldm_ext.methods.storymaker_losses import (attention_loss, draw_drops, person_weights,
                                               weighted_noise_loss)

IDENTITY_SIDE = 224  # identities for grids and the pipeline: (6, 224, 224) face | character
OFFICIAL_ADAPTER = "storymaker_adapter"  # the export's adapter in the released layout
OFFICIAL_USAGE = """StoryMaker adapter in the official layout (`image_proj_model` = the PPR, \
`ip_adapter` = LoRA and K_i / V_i by `attn_processors` index, as the released `mask.bin`). \
The official SDXL pipeline (RedAIGC/StoryMaker `pipeline_sdxl_storymaker.py`) reads the \
`.bin` form; it builds rank-128 LoRA on to_q/k/v/out of every attention layer and ViT-H \
sized resamplers, so it takes adapters of the official recipe \
(`storymaker_sdxl_official`):

```python
from pipeline_sdxl_storymaker import StableDiffusionXLStoryMakerPipeline

pipe = StableDiffusionXLStoryMakerPipeline.from_pretrained(base)
pipe.load_storymaker_adapter("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "{bin}",
                             scale=0.8, lora_scale=0.8)
```

idforge reads either file as released weights: `method.storymaker_weights={safetensors}`.
"""


def build_ppr(hp, token_dim: int, clip_dim: int, id_dim: int) -> PositionalPerceiverResampler:
    """The PPR of config ``hp`` for a UNet of cross-attention width ``token_dim``."""
    face = FaceIDPlusTokens(token_dim, id_dim=id_dim, clip_dim=clip_dim,
                            num_tokens=hp.face_tokens, depth=hp.face_perceiver_depth,
                            shortcut_scale=hp.face_shortcut_scale)
    character = Resampler(dim=hp.resampler_dim, depth=hp.resampler_depth,
                          dim_head=hp.resampler_dim_head, heads=hp.resampler_heads,
                          num_queries=hp.character_tokens, embedding_dim=clip_dim,
                          output_dim=token_dim)
    return PositionalPerceiverResampler(face, character, hp.max_characters)


def layer_level(name: str, num_levels: int) -> int:
    """UNet resolution level of an attention layer (0 = full latent resolution)."""
    if name.startswith("down_blocks."):
        return int(name.split(".")[1])
    if name.startswith("up_blocks."):
        return num_levels - 1 - int(name.split(".")[1])
    return num_levels - 1  # mid_block


class StoryMaker(IdentityMethod):
    """Training module; ``image_tokens``, ``negative_tokens``, ``image_mask`` and
    ``predict_noise`` are shared with ``StoryMakerPipeline``."""

    def __init__(self, cfg, backbone: Backbone, face_encoder, image_encoder: nn.Module,
                 id_encoder: nn.Module | None = None) -> None:
        super().__init__(cfg, backbone)
        hp = cfg.method
        if hp.num_slots > hp.max_characters:
            raise ValueError(f"method.num_slots={hp.num_slots} > "
                             f"max_characters={hp.max_characters}")
        if hp.id_loss_weight and id_encoder is None:
            raise ValueError("method.id_loss_weight > 0 needs a differentiable ArcFace "
                             "(build_id_loss_encoder)")
        self.controlnet = backbone.controlnet  # frozen pose ControlNet, or None
        self.face_encoder, self.image_encoder = face_encoder, image_encoder
        self.id_encoder = id_encoder  # frozen torch ArcFace of the ID loss, or None
        self.ppr = build_ppr(hp, backbone.unet.config.cross_attention_dim,
                             image_encoder.config.hidden_size, face_encoder.global_dim)
        install_processors(self.unet, decoupled=True)  # K_i / V_i start as copies of K_t / V_t
        if hp.lora_rank:
            add_lora(self.unet, hp.lora_rank, list(hp.lora_targets), hp.lora_layers)
        self.loss_layers = self._loss_layers()
        self.freeze_all_but_trainable()

    @classmethod
    def from_config(cls, cfg) -> "StoryMaker":
        hp = cfg.method
        encoder = load_image_encoder(hp.image_encoder, DTYPES[cfg.model.weight_dtype],
                                     cfg.model.local_files_only)
        method = cls(cfg, load_backbone(cfg.model), build_identity_encoder(hp), encoder,
                     build_id_loss_encoder(hp))
        method.load_released_weights()
        return method

    def load_released_weights(self) -> None:
        """The released checkpoints the config names, by their own keys (``released.py``)."""
        hp = self.cfg.method
        loads = []
        if hp.faceid_weights:
            targets = faceid_plusv2_targets(self.ppr.face, self.unet)
            loads.append((hp.faceid_weights, {s: targets[s] for s in hp.faceid_sections}))
        if hp.plus_weights:
            loads.append((hp.plus_weights, ip_adapter_plus_targets(self.ppr.character)))
        if hp.storymaker_weights:
            loads.append((hp.storymaker_weights, storymaker_targets(self.ppr, self.unet)))
        for path, targets in loads:
            skipped = load_released(path, targets)
            if skipped:
                warnings.warn(f"{path}: sections {skipped} not used", stacklevel=2)

    def trainable_modules(self) -> dict[str, nn.Module]:
        modules = {"ppr": self.ppr, "ip_kv": decoupled_modules(self.unet)}
        if self.cfg.method.lora_rank:
            modules["lora"] = lora_modules(self.unet)
        return modules

    def frozen_modules(self) -> list[nn.Module]:
        extra = [self.controlnet, self.image_encoder, self.face_encoder, self.id_encoder]
        return super().frozen_modules() + [m for m in extra if isinstance(m, nn.Module)]

    def _loss_layers(self) -> list[str]:
        """Decoupled layers whose maps the attention loss reads: all, or those at the
        lowest resolution (the official recipe: SDXL's 60 innermost layers)."""
        levels = {p.name: layer_level(p.name, self.backbone.num_levels)
                  for p in decoupled_modules(self.unet).values()}
        if self.cfg.method.attn_loss_layers == "all":
            return sorted(levels)
        return sorted(n for n, level in levels.items() if level == max(levels.values()))

    # ----- conditioning (Eq. 4-7) --------------------------------------------------------
    @torch.no_grad()
    def reference_features(self, faces: torch.Tensor, characters: torch.Tensor):
        """faces (K, 3, S, S) in [-1, 1], characters (K, 3, S', S') in [0, 1] ->
        ArcFace embeddings (K, 512), CLIP tokens of the faces (K, T, C) and characters."""
        ids = self.face_encoder.encode(faces.to(self.device)).global_.float()
        side = self.image_encoder.config.image_size
        crops = [F.interpolate(x.float(), size=(side, side), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0, 1)
                 for x in ((faces + 1) / 2, characters)]
        feats = clip_features(self.image_encoder, torch.cat(crops).to(self.device)).float()
        return ids, *feats.split(len(faces))

    def image_tokens(self, faces: torch.Tensor, characters: torch.Tensor, valid: torch.Tensor,
                     drop: torch.Tensor | None = None, zero_face: torch.Tensor | None = None,
                     zero_character: torch.Tensor | None = None) -> torch.Tensor:
        """Image prompt c_i (B, (N+1)·L, D) of faces (B, N, 3, S, S) and characters
        (B, N, 3, S', S') where valid (B, N). Per sample (B,) bool: ``drop`` feeds its
        characters as zero embeddings (as the CFG negative), ``zero_face`` /
        ``zero_character`` zero E1 / E2 (the released projector's token drops)."""
        ids, face_feats, char_feats = self.reference_features(faces[valid], characters[valid])
        owner = valid.nonzero()[:, 0]  # (K,) sample of each present character
        if drop is not None:
            keep = (~drop[owner]).float()
            ids, face_feats, char_feats = (x * keep.view(-1, *[1] * (x.dim() - 1))
                                           for x in (ids, face_feats, char_feats))
        per_char = [None if z is None else z[owner] for z in (zero_face, zero_character)]
        return self.ppr(ids, face_feats, char_feats, valid, *per_char)

    def negative_tokens(self, valid: torch.Tensor) -> torch.Tensor:
        """The CFG negative: the PPR on all-zero embeddings, (B, (N+1)·L, D)."""
        count, config = int(valid.sum()), self.image_encoder.config
        tokens = (config.image_size // config.patch_size) ** 2 + 1
        ids = torch.zeros(count, self.face_encoder.global_dim, device=self.device)
        feats = torch.zeros(count, tokens, config.hidden_size, device=self.device)
        return self.ppr(ids, feats, feats, valid.to(self.device))

    def image_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, (N+1)·L) bool: the background and the present characters' groups."""
        groups = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)
        return groups.repeat_interleave(self.ppr.tokens_per_character, dim=1)[:, None, None]

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                      ctx: AttentionContext, added: dict | None = None,
                      control: torch.Tensor | None = None) -> torch.Tensor:
        """UNet with decoupled attention (Eq. 3); the frozen ControlNet's residuals when it
        and a pose image ``control`` (B, 3, H, W) in [0, 1] are given."""
        down = mid = None
        if self.controlnet is not None and control is not None:
            with torch.no_grad():
                down, mid = self.controlnet(noisy, t, encoder_hidden_states=text,
                                            controlnet_cond=control.to(noisy.dtype),
                                            added_cond_kwargs=added, return_dict=False)
        return self.unet(noisy, t, encoder_hidden_states=text, added_cond_kwargs=added,
                         down_block_additional_residuals=down,
                         mid_block_additional_residual=mid,
                         cross_attention_kwargs={"ctx": ctx}).sample

    # ----- training ----------------------------------------------------------------------
    def model_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """L = L_SD (person-weighted) + λ L_attn (Eq. 12) [+ w_id L_id] of one batch."""
        hp, valid = self.cfg.method, batch["face_valid"]
        latents = self.encode_latents(batch["pixel_values"], generator)
        drop, drop_text = draw_drops(len(valid), hp.drop_characters, hp.empty_prompt_prob,
                                     hp.drop_both, generator)
        zero_face, zero_char = (torch.rand(len(valid), generator=generator,
                                           device=generator.device) < p
                                for p in (hp.drop_face_tokens, hp.drop_character_tokens))
        captions = [c if not d else "" for c, d in zip(batch["caption"], drop_text.tolist())]
        text, pooled = self.encode_text(captions)
        tokens = self.image_tokens(batch["face_crops"], batch["characters"], valid,
                                   drop, zero_face, zero_char)
        store = self.loss_store() if hp.attn_loss_weight else None
        ctx = AttentionContext(image_tokens=tokens, image_mask=self.image_mask(valid),
                               store=store, latent_hw=tuple(latents.shape[-2:]))
        noisy, t, target = self.noised_latents(latents, generator)
        added = self.added_cond_kwargs(pooled, tuple(batch["pixel_values"].shape[-2:]))
        pred = self.predict_noise(noisy, t, text, ctx, added, batch.get("control"))
        out = self.losses(pred, target, batch, ~drop, store)
        if hp.id_loss_weight:
            out["id"] = self.id_loss(noisy, pred, t, batch, ~drop)
            out["loss"] = out["loss"] + hp.id_loss_weight * out["id"]
        return out

    def loss_store(self) -> AttentionStore:
        """A store of the loss layers' image-attention maps, each on its layer's own grid
        (Eq. 11 compares a layer's A_k with the masks at its h x w)."""
        return AttentionStore([f"{n}:ip" for n in self.loss_layers], size=None)

    def losses(self, pred: torch.Tensor, target: torch.Tensor, batch: dict,
               keep: torch.Tensor, store: AttentionStore | None) -> dict[str, torch.Tensor]:
        """noise (weighted by 1 + w · person mask where the characters were kept), attn
        (Eq. 9-12) and their sum ``loss``."""
        hp, valid, masks = self.cfg.method, batch["face_valid"], batch["character_masks"]
        weights = (person_weights(masks, valid, keep, tuple(pred.shape[-2:]),
                                  hp.person_loss_weight) if hp.person_loss_weight else None)
        out = {"noise": weighted_noise_loss(pred, target, weights)}
        out["loss"] = out["noise"]
        if store is not None:
            maps = [store.maps[f"{n}:ip"] for n in self.loss_layers]
            out["attn"] = attention_loss(maps, masks, valid, self.ppr.tokens_per_character,
                                         hp.attn_loss_form)
            out["loss"] = out["noise"] + hp.attn_loss_weight * out["attn"]
        return out

    def id_loss(self, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, batch: dict,
                keep: torch.Tensor) -> torch.Tensor:
        """The optional ID loss (docs/methods.md §3: PortraitBooth's DIP with ArcFace), averaged
        over the batch's present characters: 1 − cos(ArcFace(aligned reference face crop),
        ArcFace(x̂0 cropped at the character's face box)) for each character of a sample
        with t <= ``id_loss_max_timestep`` whose characters were fed (``keep`` (B,)), 0 for
        the others. Only those characters' face windows are decoded. The batch carries
        boxes, not landmarks, so the generated face is the box crop (as PortraitBooth's)
        while the reference is the 5-point-aligned crop the PPR sees."""
        hp, valid = self.cfg.method, batch["face_valid"]
        need = valid & keep[:, None] & (t <= hp.id_loss_max_timestep)[:, None]  # (B, N)
        rows, slots = need.nonzero(as_tuple=True)  # (E,) each
        if len(rows) == 0:
            return pred.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            reference = self.id_encoder(batch["face_crops"][rows, slots].to(self.device)).global_
        losses = x0_identity_loss(
            self.backbone.scheduler, self.vae, self.backbone.vae_scale,
            lambda faces: self.id_encoder(faces).global_, self.id_encoder.input_size,
            noisy[rows], pred[rows], t[rows], reference,
            batch["face_boxes"][rows, slots].to(self.device), hp.id_loss_window_margin)  # (E,)
        return losses.sum() / valid.sum()

    # ----- hooks ---------------------------------------------------------------------------
    def export_layouts(self) -> list:
        """The LoRA in diffusers' layout and the whole adapter in the official one
        (``storymaker_targets``: what the released ``mask.bin`` holds)."""
        from ldm_ext.export_layouts import ReleasedLayout

        official = ReleasedLayout(OFFICIAL_ADAPTER, storymaker_targets(self.ppr, self.unet),
                                  OFFICIAL_USAGE)
        return super().export_layouts() + [official]

    def idforge_parts(self) -> str:
        return ("Plain diffusers runs the LoRA on text prompts only; the characters (PPR "
                "tokens through decoupled image attention) need the official StoryMaker "
                "pipeline with the adapter file above (one or two characters), or idforge "
                "(up to method.max_characters, from photos or a group photo).")

    def batch_identities(self, batch: dict) -> torch.Tensor:
        """(K, 6, 224, 224) in [-1, 1] per present character: its face crop, then its
        character crop (the pipeline's identity layout)."""
        valid, side = batch["face_valid"], (IDENTITY_SIDE, IDENTITY_SIDE)
        faces = F.interpolate(batch["face_crops"][valid].float(), size=side, mode="bilinear",
                              antialias=True, align_corners=False)
        chars = F.interpolate(batch["characters"][valid].float() * 2 - 1, size=side,
                              mode="bilinear", antialias=True, align_corners=False)
        return torch.cat([faces, chars], dim=1).clamp(-1, 1).detach().cpu()

    def reference_faces(self, identities: torch.Tensor) -> torch.Tensor:
        """The face halves (K, 3, 224, 224) of ``batch_identities``' identities."""
        return identities[:, :3]

    def attention_layers(self, name: str) -> bool:
        """Overlays record the image attention of the decoupled layers."""
        return name.endswith("attn2:ip") and not name.startswith("controlnet.")

    def identity_key_groups(self, num_keys: int, num_ids: int) -> list[slice]:
        """The background's L image tokens first, then each character's (Eq. 7)."""
        size = self.ppr.tokens_per_character
        return [slice(k * size, (k + 1) * size) for k in range(num_ids + 1)]
