"""Generate with SeFi-IDE: prompts naming one or several fitted identities.

Each identity is the file ``python -m ldm_ext.fit`` writes (``<run>/trainable.safetensors``:
stage-token module + word P, its sizes and config as metadata); its five (key, value) token
pairs are computed once. A prompt places identity k at ``V<k>*`` (a bare ``V*`` takes the
next identity in order): "a photo of V1* and V2* at the beach". At each sampling step the
stage of the timestep picks the pair, the prompt is encoded with it for the keys and for
the values (before the loop, in one encoder call, for the stages the schedule's timesteps
reach: a few steps need not visit all five), and classifier-free guidance runs against
the negative prompt (DDIM 50 steps, guidance 7.5 in the paper).

Command line (``ldm_ext.generate`` with its ``--identity`` flag, ``identities=`` in the
Python API)::

    python -m ldm_ext.generate --run runs/alice --identity alice=runs/alice \
        --identity bob=runs/bob/trainable.safetensors \
        --prompt "a photo of V1* and V2* at the beach" --out beach.png
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open

from ldm_ext import weights
from ldm_ext.adapters.pseudo_words import placeholder_identities
from ldm_ext.adapters.stage_tokens import METADATA_KEY, StageTokens
from ldm_ext.attention import AttentionContext, AttentionStore
from ldm_ext.cli import InputError
from ldm_ext.pipelines.base import MethodPipeline
from ldm_ext.pipelines.sampling import decode_images, denoise, initial_latents

IDENTITY_FILE = "trainable.safetensors"  # what the fitting run writes


class SeFiIDEPipeline(MethodPipeline):
    """Wraps a ``SeFiIDE`` module; identities are (S, 2, D) stage tokens."""

    # ----- identities ------------------------------------------------------------------
    def identity_from_weights(self, path: str) -> torch.Tensor:
        """(S, 2, D) the stage tokens of an identity file (or a fitting run's folder);
        an InputError when it is not one or was fitted for another token width."""
        path = Path(path)
        path = path / IDENTITY_FILE if (path / IDENTITY_FILE).is_file() else path
        if not path.is_file():
            raise InputError(f"{path}: no such identity file (ldm_ext.fit writes "
                             f"<run>/{IDENTITY_FILE})")
        state = weights.read_state(path)
        if "stage_tokens.word" not in state:
            raise InputError(f"{path}: not an identity file (no stage_tokens.word)")
        width = self.method.stage_tokens.word.shape[0]
        if state["stage_tokens.word"].shape[0] != width:
            raise InputError(f"{path}: fitted for token width "
                             f"{state['stage_tokens.word'].shape[0]}, this model's is {width}")
        module = StageTokens.from_state(state, self._hparams(path), prefix="stage_tokens.")
        with torch.no_grad():
            return module.to(self.method.device)()

    def _hparams(self, path: Path) -> dict[str, int]:
        """The module sizes saved with the file, else those of the loaded run."""
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
            if METADATA_KEY in meta:
                return json.loads(meta[METADATA_KEY])
        return self.method.stage_tokens.hparams

    def _stack(self, prompt: str, identities) -> torch.Tensor:
        """(K, S, 2, D) tokens of the identities the prompt names; None: the module's own."""
        given = identities is not None
        if not given:
            identities = [self.method.identity_tokens()]
        elif torch.is_tensor(identities) and identities.dim() == 3:
            identities = [identities]
        named = placeholder_identities(prompt)
        if given and not named:
            raise InputError(f"prompt {prompt!r} names no identity: write V* (or V1*, V2*, "
                             "...) where each identity goes")
        if max(named, default=-1) >= len(identities):
            raise InputError(f"prompt {prompt!r} names identity {max(named) + 1}, "
                             f"{len(identities)} given")
        if len({tuple(i.shape) for i in identities}) > 1:
            raise InputError("identities fitted with different numbers of stages or widths "
                             "cannot share one prompt")
        return torch.stack([i.to(self.method.device) for i in identities])

    # ----- generation ------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str, identities, *, size: tuple[int, int] = (512, 512),
                 steps: int = 50, guidance: float = 7.5,
                 generator: torch.Generator | None = None, negative_prompt: str = "",
                 progress: bool = True, store: AttentionStore | None = None) -> Image.Image:
        """One image of ``prompt`` with identity k at its ``V<k>*`` placeholders.
        ``identities``: a list of (S, 2, D) tokens (``identity_from_weights``), or None for
        the loaded run's own. ``size`` is (height, width); ``store`` records maps."""
        method = self.method
        tokens = self._stack(prompt, identities)  # (K, S, 2, D)
        num_stages = tokens.shape[1]
        stages = self._visited_stages(steps, num_stages)  # (V,) ascending
        keys, values, pooled = method.conditions([prompt] * len(stages), [tokens] * len(stages),
                                                 stages)  # (V, 77, D) each
        row = {stage: k for k, stage in enumerate(stages.tolist())}
        uncond, uncond_pooled = method.encode_text([negative_prompt])  # (1, 77, D)
        latent_hw = self.latent_shape(size)[-2:]
        branches = {}  # stage -> UNet inputs of both branches: built once, not every step

        def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            s = int(method.stages(t[:1], num_stages))  # the identities' own split
            if s not in branches:
                r = row[s]
                ctx = AttentionContext(value_states=torch.cat([uncond, values[r:r + 1]]),
                                       store=store, latent_hw=latent_hw)
                both = None if pooled is None else torch.cat([uncond_pooled, pooled[r:r + 1]])
                branches[s] = (torch.cat([uncond, keys[r:r + 1]]), ctx,
                               method.added_cond_kwargs(both, size))
            stage_keys, ctx, added = branches[s]
            return method.predict_noise(latents, t, stage_keys, ctx, added)

        latents = initial_latents(self.latent_shape(size), generator, method.device, keys.dtype)
        latents = denoise(self.scheduler, predict, latents, steps, guidance, progress, generator)
        return decode_images(method.vae, latents)[0]

    def _visited_stages(self, steps: int, num_stages: int) -> torch.Tensor:
        """(V,) the stages, ascending, of the timesteps a ``steps``-step run of the
        scheduler visits (``denoise`` sets the same timesteps again): the conditions of the
        others would be encoded for nothing."""
        self.scheduler.set_timesteps(steps, device=self.method.device)
        return self.method.stages(self.scheduler.timesteps, num_stages).unique()

    # ----- generation inputs (the Python API and ldm_ext.generate) ----------------------
    def inputs(self, values: dict[str, Any], size: tuple[int, int] | None) -> dict:
        """The stage tokens of each ``identities`` entry, ``[NAME=]FILE``, in order (V1*,
        V2*, ...); none given: the loaded run's own identity."""
        if not values["identities"]:
            return {"identities": None}
        identities = []
        for spec in values["identities"]:
            name, sep, path = str(spec).partition("=")
            identities.append(self.identity_from_weights(path if sep else name))
        return {"identities": identities}
