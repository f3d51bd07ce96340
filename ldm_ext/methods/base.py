"""The LightningModule every method builds on.

It owns what the four methods share: freezing (everything not listed by
``trainable_modules`` is frozen in the weight dtype; trainable parts are fp32), the
optimizer over trainable parameters only, per-step seeded randomness (so an interrupted
run resumes bit-for-bit), a non-finite loss guard, and saving/loading **only trainable
weights** by name as safetensors (also inside Lightning checkpoints).
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ldm_ext.backbone import Backbone, encode_prompt, tokenize


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the run stops before the optimizer step."""


class IdentityMethod(pl.LightningModule):
    """Base class: subclasses define ``trainable_modules`` and ``model_step``."""

    def __init__(self, cfg, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.unet, self.vae = backbone.unet, backbone.vae
        self.text_encoders = nn.ModuleList(backbone.text_encoders)
        self.strict_loading = False  # checkpoints hold trainable weights only

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

    def configure_optimizers(self):
        """AdamW over the trainable parameters only."""
        params = [p for p in self.trainable_parameters().values() if p.requires_grad]
        method = self.cfg.method
        return torch.optim.AdamW(params, lr=method.lr, weight_decay=method.weight_decay)

    # ----- steps -----------------------------------------------------------------------
    def model_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Losses of one batch; key ``loss`` is optimised. Shared by train and val."""
        raise NotImplementedError

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

    # ----- text ------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frozen text encoder(s): prompts -> (B, 77, D), pooled | None."""
        with torch.no_grad():
            return encode_prompt(self.backbone, tokenize(self.backbone, prompts, self.device))

    # ----- weights ---------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous()
                for k, v in self.trainable_parameters().items()}

    def save_trainable(self, path: str | Path) -> None:
        """Write only the trainable weights, by name, as safetensors."""
        save_file(self.trainable_state_dict(), str(path))

    def load_trainable(self, path: str | Path) -> None:
        """Load weights written by ``save_trainable`` or a Lightning ``.ckpt`` of this
        module (whose state_dict holds the same names); names must match exactly."""
        if Path(path).suffix == ".ckpt":  # our own run's checkpoint: trusted, has non-tensors
            state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        else:
            state = load_file(str(path))
        params = self.trainable_parameters()
        missing, unexpected = params.keys() - state.keys(), state.keys() - params.keys()
        if missing or unexpected:
            raise KeyError(f"{path}: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])

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
