"""Generate with StoryMaker: one to three characters (face, hair, clothes, body) in any prompt.

A character comes from one reference photo (its largest face) or from one person of a group
photo: the face crop (ArcFace and CLIP: its five landmarks put on ArcFace's template at
224 px, as the official code feeds CLIP and as ArcFace, after halving, expects) and the
character crop training makes too (``ldm_ext.perception.character_crop.reference_crop``: the
official trainer's soft mask, the person on white, squashed to 224² with LANCZOS).
Masks come from ``--masks`` or from the perception stages (``ldm_ext.perception``: human
parsing split by pose when its weights are local, else the pose hull). Sampling as
``infer.py``: UniPC, 25 steps, CFG 7.5, image scale 0.8 (γ of Eq. 3), LoRA scale 0.8,
negative = the PPR on all-zero embeddings; a pose template drives the frozen pose
ControlNet when the run has one.

An identity is a (6, 224, 224) tensor in [-1, 1]: the face crop, then the character crop.

    python -m ldm_ext.generate --run runs/storymaker_demo --ids a.jpg b.jpg \
        --prompt "a man and a woman taking a selfie by a volcano" --out out.png
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ldm_ext.adapters.lora import lora_scale
from ldm_ext.attention import AttentionContext
from ldm_ext.cli import InputError
from ldm_ext.face.align import arcface_crops, crops_to_tensor, tensor_to_uint8
from ldm_ext.perception.character_crop import reference_crop
from ldm_ext.pipelines.base import MethodPipeline
from ldm_ext.pipelines.options import photo_name, read_photo
from ldm_ext.pipelines.sampling import decode_images, denoise, initial_latents, to_tensor
from ldm_ext.perception.pose import render_control_image, slot_color

SIDE = 224  # CLIP ViT-H/14 input; both halves of an identity


def pack_identity(face: torch.Tensor, character: np.ndarray) -> torch.Tensor:
    """face (3, S, S) in [-1, 1] and character (224, 224, 3) uint8 -> (6, 224, 224) in [-1, 1]."""
    if face.shape[-2:] != (SIDE, SIDE):
        face = F.interpolate(face[None].float(), size=(SIDE, SIDE), mode="bilinear",
                             antialias=True, align_corners=False)[0].clamp(-1, 1)
    return torch.cat([face, to_tensor(character) * 2 - 1])


class StoryMakerPipeline(MethodPipeline):
    """Wraps a trained ``StoryMaker`` module (weights loaded) for sampling.

    ``annotator``: faces, pose and character masks of reference photos
    (``ldm_ext.perception.annotator.Annotator``; default MTCNN, built on first use)."""

    def __init__(self, method, annotator=None, scheduler: str = "unipc") -> None:
        super().__init__(method, scheduler)
        self.annotator = annotator

    # ----- identities ------------------------------------------------------------------
    def identity(self, photo: Image.Image, mask: np.ndarray | None = None) -> torch.Tensor:
        """The character of a photo's largest face (its mask: ``mask`` or segmented)."""
        return self.characters(photo, 1, None if mask is None else [mask])[0]

    def characters(self, photo: Image.Image, count: int | None = None,
                   masks: list[np.ndarray] | None = None) -> torch.Tensor:
        """(K, 6, 224, 224): the ``count`` largest faces' characters (all when None)."""
        image = np.asarray(photo.convert("RGB"))
        annotator = self._annotator()
        faces = annotator.faces(image)
        if len(faces) == 0:
            raise InputError("no face found in the photo")
        if count is not None and count > len(faces):
            raise InputError(f"{len(faces)} faces found, {count} characters asked for")
        faces = faces.select(slice(0, count))
        if masks is not None:  # given masks: white = the person, resized to the photo
            masks = [cv2.resize(m.astype(np.uint8), image.shape[1::-1],
                                interpolation=cv2.INTER_NEAREST) > 0 for m in masks]
        else:
            people, owner, _ = annotator.people(image, faces)
            masks = list(annotator.character_segmenter()(image, faces.boxes, people, owner))
        aligned = crops_to_tensor(list(arcface_crops(image, faces.landmarks, SIDE)), SIDE)
        return torch.stack([pack_identity(face, reference_crop(image, mask, SIDE))
                            for face, mask in zip(aligned, masks)])

    def _annotator(self):
        if self.annotator is None:
            from ldm_ext.perception.annotator import Annotator, Filters

            self.annotator = Annotator(filters=Filters(min_face_size=16, min_score=0.9))
        return self.annotator

    def legend(self, identities, size: tuple[int, int]) -> Image.Image:
        """Each character's face and character crop, framed in its slot colour."""
        height, width = size
        canvas = Image.new("RGB", (width, height), (235, 235, 235))
        ids = self.stacked(identities)
        side = max(8, min(height // 2, width // (2 * max(1, len(ids)))) - 6)
        for k, identity in enumerate(ids):
            for half in range(2):
                thumb = Image.fromarray(tensor_to_uint8(identity[None, 3 * half:3 * half + 3],
                                                        side)[0])
                framed = ImageOps.expand(thumb, border=2, fill=slot_color(k))
                canvas.paste(framed, ((2 * k + half) * (side + 6), 2))
        return canvas

    # ----- generation ------------------------------------------------------------------
    def context(self, identities: torch.Tensor | None, latent_hw: tuple[int, int], store=None,
                zero_character: bool = False, ip_scale: float | None = None):
        """The guidance branches' attention context: image tokens (negative, positive)."""
        method = self.method
        ctx = AttentionContext(store=store, latent_hw=latent_hw,
                               ip_scale=method.cfg.method.ip_scale if ip_scale is None
                               else ip_scale)
        if identities is None:
            return ctx
        if len(identities) > method.ppr.max_characters:
            raise InputError(f"{len(identities)} characters; the model takes at most "
                             f"{method.ppr.max_characters}")
        ids, valid = identities.to(method.device), torch.ones(1, len(identities), dtype=torch.bool)
        zero = torch.tensor([zero_character])
        tokens = method.image_tokens(ids[None, :, :3], (ids[None, :, 3:] + 1) / 2,
                                     valid.to(method.device), zero_character=zero.to(method.device))
        ctx.image_tokens = torch.cat([method.negative_tokens(valid), tokens])  # (2, M, D)
        return ctx

    @torch.no_grad()
    def __call__(self, prompt: str, identities, *, size: tuple[int, int] = (1024, 1024),
                 steps: int = 25, guidance: float = 7.5,
                 generator: torch.Generator | None = None, negative_prompt: str = "",
                 progress: bool = True, store=None, people=None, zero_character: bool = False,
                 ip_scale: float | None = None, lora: float | None = None) -> Image.Image:
        """One image of ``size`` (H, W) with the characters ``identities`` ((K, 6, 224, 224)
        or a list of (6, 224, 224); None: the prompt alone). ``people``: a pose template
        for the ControlNet; ``zero_character``: identity only (E2 = 0, Fig. 4);
        ``ip_scale`` / ``lora``: γ and the LoRA scale (default the config's)."""
        method, cfg = self.method, self.method.cfg.method
        latent_hw = tuple(self.latent_shape(size)[-2:])
        ctx = self.context(self.stacked(identities), latent_hw, store, zero_character, ip_scale)
        text, pooled = method.encode_text([negative_prompt, prompt])
        added = method.added_cond_kwargs(pooled, size)
        control = self.control(people, size)
        latents = initial_latents(self.latent_shape(size), generator, method.device, text.dtype)
        with lora_scale(method.unet, cfg.lora_scale if lora is None else lora):
            latents = denoise(self.scheduler, lambda x, t: method.predict_noise(
                x, t, text, ctx, added, control), latents, steps, guidance, progress, generator)
        return decode_images(method.vae, latents)[0]

    def control(self, people, size: tuple[int, int]) -> torch.Tensor | None:
        """(2, 3, H, W) pose image of ``people`` for both branches, or None without them."""
        if people is None:
            return None
        if self.method.controlnet is None:
            raise InputError("a pose was given but this run has no ControlNet "
                             "(model.controlnet: a pretrained OpenPose ControlNet)")
        image = render_control_image(people, size, [None] * len(people))
        return to_tensor(image)[None].expand(2, -1, -1, -1).to(self.method.device)

    # ----- generation inputs (the Python API and ldm_ext.generate) ----------------------
    def inputs(self, values: dict[str, Any], size: tuple[int, int] | None) -> dict:
        """Characters from ``photos`` (+ ``masks``) or ``group`` (+ ``num_ids``); the
        pose for the ControlNet; ``zero_character`` and the scales."""
        inputs = {"identities": self._identities(values),
                  "zero_character": values["zero_character"], "ip_scale": values["ip_scale"],
                  "lora": values["lora_scale"]}
        if values["pose"] is not None:
            inputs.update(self.pose_inputs(values["pose"], size))
        return inputs

    def _identities(self, values: dict[str, Any]) -> torch.Tensor:
        """(K, 6, 224, 224) characters of the photos (with their masks) or the group."""
        if values["group"] is not None:
            group = values["group"]
            try:
                return self.characters(read_photo(group, "--group"), values["num_ids"])
            except InputError as err:
                raise InputError(f"{photo_name(group, 0, '--group')}: {err}") from None
        masks = values["masks"] or [None] * len(values["photos"])
        found = []
        for k, (photo, mask) in enumerate(zip(values["photos"], masks)):
            if mask is not None:
                mask = np.asarray(read_photo(mask, "--masks").convert("L")) > 127
            image = read_photo(photo, "--ids")
            try:
                found.append(self.identity(image, mask))
            except InputError as err:
                raise InputError(f"{photo_name(photo, k, '--ids')}: {err}") from None
        return torch.stack(found)
