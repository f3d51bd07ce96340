"""The LightningModule every method builds on.

It owns what the methods share, so that a method's module says only what is its own
(trainable modules, conditioning, losses):
- freezing (everything not listed by ``trainable_modules`` is frozen in the weight dtype;
  trainable parts are fp32), the optimizer over trainable parameters only and the
  learning-rate schedule (``ldm_ext/methods/schedule.py``);
- the generic diffusion step: VAE latents, noise (with an optional offset), timesteps,
  the epsilon / v-prediction target, caption dropout, text encoding with or without
  gradients, SDXL's extra conditioning (pooled text + time ids);
- per-step seeded randomness (an interrupted run resumes bit-for-bit) and a non-finite
  loss guard;
- the hooks the callbacks, eval and generation call: the method's pipeline, the identities
  a sample grid shows for a batch, the key groups of its attention overlay;
- trainable weights by name (``ldm_ext/weights.py``).
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from diffusers import ModelMixin
from torch import nn

from ldm_ext.backbone import Backbone, encode_prompt, load_backbone, tokenize
from ldm_ext.cli import RunStopped
from ldm_ext.losses import noise_target
from ldm_ext import weights
from ldm_ext.methods.schedule import build_optimizer


class NonFiniteLossError(RunStopped, FloatingPointError):
    """The training loss became NaN/inf; the run stops before the optimizer step (the
    commands that train tell it in one line, exit 3: ``ldm_ext.cli.run_training_cli``)."""


class IdentityMethod(pl.LightningModule):
    """Base class: subclasses define ``trainable_modules`` and ``model_step``."""

    def __init__(self, cfg, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.unet, self.vae = backbone.unet, backbone.vae
        self.text_encoders = nn.ModuleList(backbone.text_encoders)
        self.strict_loading = False  # checkpoints hold trainable weights only

    @classmethod
    def from_config(cls, cfg) -> "IdentityMethod":
        """Load what the config names (backbone, encoders) and build the module."""
        return cls(cfg, load_backbone(cfg.model))

    # ----- what trains -------------------------------------------------------------
    def trainable_modules(self) -> dict[str, nn.Module]:
        """Name -> module of everything this method trains (names key the saved weights)."""
        raise NotImplementedError

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable parameters keyed ``<module name>.<param name>``."""
        params = {}
        for prefix, module in self.trainable_modules().items():
            for name, param in module.named_parameters():
                params[f"{prefix}.{name}"] = param
        return params

    def freeze_all_but_trainable(self) -> None:
        """Freeze every parameter, then unfreeze and upcast the trainable ones to fp32."""
        self.requires_grad_(False)
        for param in self.trainable_parameters().values():
            param.data = param.data.float()
            param.requires_grad_(True)

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that never train; they stay in eval mode (no BatchNorm updates)."""
        return [self.unet, self.vae, self.text_encoders]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass of the UNet and of every trainable
        diffusers model (e.g. a ControlNet): gradients reach those through their blocks."""
        models = [self.unet] + [m for m in self.trainable_modules().values()
                                if isinstance(m, ModelMixin)]
        for model in models:
            if enabled:
                model.enable_gradient_checkpointing()
            else:
                model.disable_gradient_checkpointing()

    def diffusion_models(self) -> list[nn.Module]:
        """The denoising networks a step and a sample run: the UNet, and a ControlNet when
        the method has one."""
        controlnet = getattr(self, "controlnet", None)
        return [self.unet] + ([controlnet] if controlnet is not None else [])

    def compile_models(self, backend: str = "inductor") -> None:
        """``torch.compile`` each diffusion model in place (``Module.compile``: parameter
        names, and so saved weights, are unchanged) with ``fullgraph=True``: a graph break
        fails instead of silently splitting the graph. Training steps and this module's
        sample grids then run the compiled forwards."""
        for model in self.diffusion_models():
            model.compile(fullgraph=True, backend=backend)

    def configure_optimizers(self):
        """The configured optimizer over trainable parameters, lr schedule per step."""
        params = [p for p in self.trainable_parameters().values() if p.requires_grad]
        return build_optimizer(params, self.cfg.method)

    # ----- the generic diffusion step ---------------------------------------------------
    def model_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Losses of one batch; key ``loss`` is optimised. Shared by train and val."""
        raise NotImplementedError

    def encode_latents(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled VAE latents (B, C, H/8, W/8), sampled."""
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            return dist.sample(generator) * self.vae.config.scaling_factor

    def noised_latents(self, latents: torch.Tensor, generator: torch.Generator):
        """(noisy latents, timesteps (B,), regression target) of one training step: noise
        with ``method.noise_offset`` per channel, uniform timesteps, ε or v target."""
        shape, device, dtype = latents.shape, latents.device, latents.dtype
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if self.cfg.method.noise_offset:
            offset = torch.randn((*shape[:2], 1, 1), generator=generator, device=device,
                                 dtype=dtype)
            noise = noise + self.cfg.method.noise_offset * offset
        scheduler = self.backbone.scheduler
        t = torch.randint(0, scheduler.config.num_train_timesteps, (shape[0],),
                          generator=generator, device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        return noisy, t, noise_target(scheduler, latents, noise, t)

    def drop_captions(self, captions: list[str], generator: torch.Generator) -> list[str]:
        """Replace each caption by "" with probability ``method.empty_prompt_prob``."""
        draws = torch.rand(len(captions), generator=generator, device=generator.device)
        keep = (draws >= self.cfg.method.empty_prompt_prob).tolist()
        return [c if k else "" for c, k in zip(captions, keep)]

    def encode_text(self, prompts: list[str], grad: bool = False,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text encoder(s): prompts -> (B, 77, D), pooled (B, D') | None (SD1.5).

        ``grad=True`` keeps the graph (for methods that train through the encoder's
        input embeddings); the encoders' own weights stay frozen either way."""
        ids = tokenize(self.backbone, prompts, self.device)
        with torch.set_grad_enabled(grad):
            return encode_prompt(self.backbone, ids)

    def added_cond_kwargs(self, pooled: torch.Tensor | None,
                          size: tuple[int, int]) -> dict | None:
        """SDXL's extra UNet / ControlNet conditioning for images of ``size`` (H, W):
        the pooled text embedding and the time ids (original size, crop top-left (0, 0),
        target size); None for SD1.5."""
        if self.backbone.family != "sdxl":
            return None
        ids = torch.tensor([*size, 0, 0, *size], device=pooled.device, dtype=pooled.dtype)
        return {"text_embeds": pooled, "time_ids": ids.expand(pooled.shape[0], -1)}

    def step_generator(self, offset: int = 0) -> torch.Generator:
        """A generator seeded by (seed, global step, rank): identical on resume."""
        seed = (self.cfg.seed * 1_000_003 + self.global_step * 7919 + self.global_rank
                + offset) % (2**63)
        return torch.Generator(device=self.device).manual_seed(seed)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.model_step(batch, self.step_generator())
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}; "
                "stopping before the optimizer step, the last checkpoint is kept")
        batch_size = len(batch["caption"])
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()},
                      prog_bar=True, batch_size=batch_size)
        return loss

    # ----- hooks for callbacks, eval and generation ------------------------------------
    def pipeline(self, **kwargs):
        """This method's sampling pipeline (``ldm_ext/registry.py``), sampler from config."""
        from ldm_ext.registry import method_spec

        kwargs.setdefault("scheduler", self.cfg.method.sampler)
        return method_spec(self.cfg.method.name).pipeline_class(self, **kwargs)

    def batch_identities(self, batch: dict) -> torch.Tensor | None:
        """The identities of a training batch that sample grids and the evaluation
        callback reuse: (K, 3, S, S) valid face crops in [-1, 1]; None if the batch has
        none (then grids show the sample prompts only)."""
        if "face_crops" not in batch:
            return None
        return batch["face_crops"][batch["face_valid"]].detach().cpu()

    def reference_faces(self, identities: torch.Tensor) -> torch.Tensor:
        """The face crops (K, 3, S, S) in [-1, 1] of identities from ``batch_identities``,
        which the evaluation callback scores generated faces against: the identities
        themselves, unless a method's identities hold more than the face crop."""
        return identities

    def attention_layers(self, name: str) -> bool:
        """Which attention processors an overlay records: the UNet's cross-attention."""
        return name.endswith("attn2") and not name.startswith("controlnet.")

    def identity_key_groups(self, num_keys: int, num_ids: int) -> list[slice] | None:
        """Key positions of the text (first) and of each identity, for attention overlays;
        None when this method has no per-identity keys."""
        return None

    # ----- weights ---------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous()
                for k, v in self.trainable_parameters().items()}

    def save_trainable(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write only the trainable weights, by name, as safetensors."""
        weights.save(self.trainable_state_dict(), path, metadata)

    def load_trainable(self, path: str | Path,
                       state: dict[str, torch.Tensor] | None = None) -> None:
        """Load weights written by ``save_trainable``, a Lightning ``.ckpt`` of this module
        or an export folder (``ldm_ext.export``); names must match exactly. ``state``:
        the weights of ``path`` when the caller has read them already."""
        state = weights.read_state(path) if state is None else state
        weights.load_into(self.trainable_parameters(), state, path)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep Lightning checkpoints small: trainable weights only."""
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in keep
        }

    def _trainable_keys(self) -> set[str]:
        ids = {id(p) for p in self.trainable_parameters().values()}
        return {name for name, p in self.named_parameters(remove_duplicate=False)
                if id(p) in ids}

    # ----- export (ldm_ext.export) -----------------------------------------------------
    def export_layouts(self) -> list:
        """The trained parts in other ecosystems' layouts (``ldm_ext/export_layouts.py``),
        written beside idforge's own export: the UNet's LoRA as diffusers loads it when one
        trains; a method adds its own (e.g. a released adapter's key layout)."""
        from ldm_ext.export_layouts import DiffusersLora, trains_lora

        return [DiffusersLora(self.unet)] if trains_lora(self.unet,
                                                          self.trainable_parameters()) else []

    def idforge_parts(self) -> str:
        """One plain sentence for the model card: which trained parts only idforge runs."""
        return "Generating with the trained identity conditioning needs idforge."
