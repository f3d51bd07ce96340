"""What every method's pipeline offers to generation, eval and the callbacks.

A pipeline wraps a trained method module (duck-typed: it never imports ``ldm_ext.methods``)
and is called as ``pipe(prompt, identities, size=(H, W), steps=, guidance=, generator=)``
-> one PIL image. ``identities`` is whatever the method conditions on, made by
``identity(photo)`` (from a photo) or ``identity_from_weights(path)`` (per-identity methods:
one fitted checkpoint per subject), a list of them per image, or None.
What a user gives beside the prompt (photos, a pose, scales: the method config's
``GENERATION_INPUTS``, ``ldm_ext/pipelines/options.py``) reaches ``inputs`` as one dict,
from the Python API's keywords and from ``ldm_ext.generate``'s flags alike.
"""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from ldm_ext import weights
from ldm_ext.cli import InputError
from ldm_ext.pipelines.options import photo_name, read_photo
from ldm_ext.pipelines.sampling import inference_scheduler


class MethodPipeline:
    """Base pipeline: scheduler by name, identity hooks, generation inputs."""

    def __init__(self, method, scheduler: str = "ddim") -> None:
        self.method = method
        self.scheduler = inference_scheduler(method.backbone.scheduler, scheduler)

    # ----- identities ------------------------------------------------------------------
    def identity(self, photo: Image.Image) -> Any:
        """One subject's identity from a photo of them (what ``__call__`` takes per id)."""
        raise NotImplementedError(f"{type(self).__name__} takes no identity photos")

    def identities_from_photos(self, photos: list, label: str = "--ids") -> list:
        """``identity`` of each photo (a path or a PIL image), in order; a missing or
        unreadable file or a photo without a face is an ``InputError`` naming it."""
        identities = []
        for k, photo in enumerate(photos):
            image = read_photo(photo, label)
            try:
                identities.append(self.identity(image))
            except InputError as err:
                raise InputError(f"{photo_name(photo, k, label)}: {err}") from None
        return identities

    @staticmethod
    def stacked(identities) -> torch.Tensor | None:
        """One image's identities as one tensor (K, ...): a tensor as given, a list or
        tuple of per-subject tensors (...) stacked, None for none (None or empty)."""
        if identities is None or len(identities) == 0:
            return None
        if isinstance(identities, (list, tuple)):
            return torch.stack(list(identities))
        return identities

    def identity_from_weights(self, path: str) -> dict[str, torch.Tensor]:
        """One subject's identity from weights fitted to them (per-identity methods):
        the trainable state of that checkpoint, by name."""
        return weights.read_state(path)

    def legend(self, identities, size: tuple[int, int]) -> Image.Image | None:
        """A picture of what a generation with ``identities`` is conditioned on, shown
        above sample grids; None: no legend row."""
        return None

    # ----- generation ------------------------------------------------------------------
    def __call__(self, prompt: str, identities, *, size: tuple[int, int] = (512, 512),
                 steps: int = 50, guidance: float = 7.5,
                 generator: torch.Generator | None = None, negative_prompt: str = "",
                 progress: bool = True, store=None, **extra) -> Image.Image:
        raise NotImplementedError

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(1, C, h, w) latents of one image of ``size`` (H, W)."""
        scale = self.method.backbone.vae_scale
        return (1, self.method.unet.config.in_channels, size[0] // scale, size[1] // scale)

    # ----- generation inputs (the Python API and ldm_ext.generate) ----------------------
    def inputs(self, values: dict[str, Any], size: tuple[int, int] | None) -> dict:
        """Call arguments from the generation inputs ``values`` (name -> value of the
        options the method's config declares, checked by ``options.check``): at least
        ``identities``; ``size`` (H, W) when the inputs fix it (a pose file's stored
        size). ``size``: the size asked for, None for the default."""
        return {"identities": None}

    def pose_inputs(self, path: str, size: tuple[int, int] | None) -> dict:
        """``people`` of a pose file (``ldm_ext.perception.pose.files``) and the size they fix: the
        file's stored (H, W) when ``size`` (H, W) is not given; with it, the keypoints
        fitted onto the image of ``size``, scaled by one factor and centred. A file that
        stores no size but whose keypoints need a frame (OpenPose's own JSON) is fitted
        onto ``size``, else the training resolution, and fixes no size."""
        from ldm_ext.perception.pose import fit_people
        from ldm_ext.perception.pose.files import load_pose

        pose = load_pose(path)
        if pose.hw is None:
            return {"people": pose.people}
        if not size and pose.stored_size:
            return {"people": pose.people, "size": pose.hw}
        size = size or (self.method.cfg.data.resolution,) * 2
        return {"people": fit_people(pose.people, pose.hw, tuple(size))}
