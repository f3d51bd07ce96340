"""What every method's pipeline offers to generation, eval and the callbacks.

A pipeline wraps a trained method module (duck-typed: it never imports ``ldm_ext.methods``)
and is called as ``pipe(prompt, identities, size=(H, W), steps=, guidance=, generator=)``
-> one PIL image. ``identities`` is whatever the method conditions on, made by
``identity(photo)`` (from a photo) or ``identity_from_weights(path)`` (per-identity methods:
one fitted checkpoint per subject), a list of them per image, or None.
``ldm_ext.generate`` adds each pipeline's own command-line flags (``add_arguments``)
and turns them into call arguments (``inputs_from_args``).
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
from PIL import Image

from ldm_ext import weights
from ldm_ext.cli import InputError, positive_int
from ldm_ext.pipelines.sampling import inference_scheduler


class MethodPipeline:
    """Base pipeline: scheduler by name, identity hooks, command-line hooks."""

    def __init__(self, method, scheduler: str = "ddim") -> None:
        self.method = method
        self.scheduler = inference_scheduler(method.backbone.scheduler, scheduler)

    # ----- identities ------------------------------------------------------------------
    def identity(self, photo: Image.Image) -> Any:
        """One subject's identity from a photo of them (what ``__call__`` takes per id)."""
        raise NotImplementedError(f"{type(self).__name__} takes no identity photos")

    def identities_from_files(self, paths: list[str]) -> list:
        """``identity`` of each photo file, in order; a missing or unreadable file or a
        photo without a face is an ``InputError`` naming the file."""
        from ldm_ext.cli import open_image

        identities = []
        for path in paths:
            try:
                identities.append(self.identity(open_image(path, "identity photo")))
            except InputError as err:
                raise InputError(f"identity photo {path}: {err}") from None
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

    # ----- command line (ldm_ext.generate) -----------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this method's own generation flags."""

    def inputs_from_args(self, args: argparse.Namespace) -> dict:
        """Call arguments from the parsed flags: at least ``identities``; ``size`` (H, W)
        when the inputs fix it (e.g. a pose file)."""
        return {"identities": None}

    @staticmethod
    def add_photo_arguments(parser: argparse.ArgumentParser, noun: str) -> None:
        """``--ids`` (one photo per ``noun``) or ``--group`` (one photo of several, with
        ``--num-ids``), for pipelines that take either; see ``check_photo_arguments``."""
        ids = parser.add_mutually_exclusive_group(required=True)
        ids.add_argument("--ids", nargs="+", help=f"one photo per {noun} (largest face)")
        ids.add_argument("--group", help=f"one photo whose largest faces are the {noun}s")
        parser.add_argument("--num-ids", type=positive_int, default=None,
                            help=f"with --group: how many {noun}s (largest faces first)")

    @staticmethod
    def check_photo_arguments(args: argparse.Namespace, noun: str) -> None:
        """--num-ids only with --group: an InputError otherwise."""
        if args.ids and args.num_ids is not None:
            raise InputError(f"--num-ids goes with --group; --ids takes one {noun} per photo")

    def pose_inputs(self, path: str, side: int | None) -> dict:
        """``people`` of a pose file (``ldm_ext.pose_files``) and the size they fix: the
        file's stored (H, W) when ``side`` (--size) is not given; with it, the keypoints
        fitted onto the side x side image, scaled by one factor and centred. A file that
        stores no size but whose keypoints need a frame (OpenPose's own JSON) is fitted
        onto ``side``, else the training resolution, and fixes no size."""
        from ldm_ext.pose import fit_people
        from ldm_ext.pose_files import load_pose

        pose = load_pose(path)
        if pose.hw is None:
            return {"people": pose.people}
        if not side and pose.stored_size:
            return {"people": pose.people, "size": pose.hw}
        side = side or self.method.cfg.data.resolution
        return {"people": fit_people(pose.people, pose.hw, (side, side))}
