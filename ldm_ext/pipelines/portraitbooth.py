"""Generate with PortraitBooth: one subject, or any number composed region by region.

One subject: classifier-free guidance between the negative prompt and the prompt whose
identity token carries the subject (STEA, Eq. 4); the prompt's expression word is plain
text the model learnt to place on the face (ECAC), so "a happy man" / "an angry man" change
the face. Several subjects (Sec. 5.3, MultiDiffusion): per step one UNet batch holds the
negative prompt, the shared prompt with every subject, and the shared prompt with subject k
alone (its own identity-word occurrence augmented) for each k; the conditional predictions
are blended by region (``ldm_ext/pipelines/regions.py``), subject k inside region k. The
k-th identity word of the prompt ("a man and a woman") takes the k-th identity.

Command line (``ldm_ext.generate`` with the inputs ``PortraitBoothConfig.GENERATION_INPUTS``
declares)::

    python -m ldm_ext.generate --run runs/portraitbooth_demo --ids a.jpg b.jpg \
        --prompt "a photo of a happy man and an angry woman on the beach" --out out.png
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from ldm_ext.attention import AttentionContext
from ldm_ext.cli import InputError
from ldm_ext.face.align import tensor_to_uint8
from ldm_ext.pipelines.base import MethodPipeline
from ldm_ext.pipelines.regions import (blend_weights, boxes_from_people, compose, load_layout,
                                       region_masks)
from ldm_ext.pipelines.sampling import decode_images, denoise, initial_latents
from ldm_ext.perception.pose import pose_template, slot_color
from ldm_ext.word_tokens import word_positions


class PortraitBoothPipeline(MethodPipeline):
    """Wraps a trained ``PortraitBooth`` module (weights loaded) for sampling.

    ``detector``: face detector for identity photos (default: MTCNN cropping at the face
    encoder's input size, built on first use)."""

    def __init__(self, method, detector=None, scheduler: str = "euler") -> None:
        super().__init__(method, scheduler)
        self.detector = detector

    # ----- identities ------------------------------------------------------------------
    def identity(self, photo: Image.Image) -> torch.Tensor:
        """Largest face of a photo -> (3, S, S) crop in [-1, 1] (the reference face f)."""
        if self.detector is None:
            from ldm_ext.face import MTCNNDetector

            self.detector = MTCNNDetector(crop_size=self.method.face_encoder.input_size,
                                          device=str(self.method.device))
        faces = self.detector.detect(np.asarray(photo.convert("RGB")))
        if len(faces) == 0:
            raise InputError("no face found in the identity photo")
        return faces.crops[0]

    def regions(self, num_ids: int, size: tuple[int, int], people=None) -> torch.Tensor:
        """(K, 4) normalised regions of the people of a pose template (default: side by side)."""
        people = people if people is not None else pose_template(num_ids, size)
        if len(people) < num_ids:
            raise InputError(f"the pose has {len(people)} people for {num_ids} identities")
        margin = self.method.cfg.method.region_margin
        return torch.from_numpy(boxes_from_people(people[:num_ids], size, margin))

    def legend(self, identities, size: tuple[int, int]) -> Image.Image:
        """The regions of a composition, framed in slot colours, each with its subject."""
        height, width = size
        canvas = Image.new("RGB", (width, height), (235, 235, 235))
        draw, crops = ImageDraw.Draw(canvas), self.stacked(identities)
        side = max(8, min(height, width) // 5)
        for k, box in enumerate(self.regions(len(crops), size).tolist()):
            x0, y0, x1, y1 = (np.asarray(box) * [width, height, width, height]).round()
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=slot_color(k), width=2)
            thumb = Image.fromarray(tensor_to_uint8(crops[k:k + 1], side)[0])
            canvas.paste(ImageOps.expand(thumb, border=2, fill=slot_color(k)),
                         (int(x0) + 3, int(y0) + 3))
        return canvas

    # ----- generation ------------------------------------------------------------------
    def conditioning(self, prompt: str, negative_prompt: str, crops: torch.Tensor | None):
        """Text rows (R, 77, D) and pooled: the negative prompt, the prompt with every
        subject, then (two or more subjects) the prompt with subject k alone, for each k."""
        method, num_ids = self.method, 0 if crops is None else len(crops)
        words = list(method.cfg.method.identity_words)
        named = len(word_positions(method.backbone.tokenizers[0], [prompt], words)[0])
        if num_ids > named:
            raise InputError(f"the prompt names {named} subject word(s) ({', '.join(words)}) "
                             f"for {num_ids} identities; the k-th word takes the k-th identity")
        if num_ids == 0:
            return method.text_conditioning([negative_prompt, prompt], None,
                                            torch.zeros(2, 0, dtype=torch.bool))
        solo = torch.eye(num_ids, dtype=torch.bool) if num_ids > 1 else torch.zeros(0, 1).bool()
        valid = torch.cat([torch.zeros(1, num_ids, dtype=torch.bool),
                           torch.ones(1, num_ids, dtype=torch.bool), solo]).to(method.device)
        shallow = method.face_features(crops).shallow  # (K, F)
        prompts = [negative_prompt] + [prompt] * (len(valid) - 1)
        return method.text_conditioning(prompts, shallow.expand(len(valid), -1, -1), valid)

    @torch.no_grad()
    def __call__(self, prompt: str, identities, *, size: tuple[int, int] = (512, 512),
                 steps: int = 50, guidance: float = 5.0,
                 generator: torch.Generator | None = None, negative_prompt: str = "",
                 progress: bool = True, store=None,
                 regions: torch.Tensor | None = None, people=None) -> Image.Image:
        """One image of ``size`` (H, W) with the identities (K, 3, S, S) (or a list of
        crops, or None). K >= 2: composed in ``regions`` (K, 4) normalised xyxy, default
        the people of ``people`` (a pose template, default side by side). ``store``
        records the maps it wants (batch rows as in ``conditioning``)."""
        method = self.method
        crops = self.stacked(identities)
        text, pooled = self.conditioning(prompt, negative_prompt, crops)
        added = method.added_cond_kwargs(pooled, size)
        latents = initial_latents(self.latent_shape(size), generator, method.device, text.dtype)
        # one context for every step: each layer projects the text to keys/values once
        ctx = AttentionContext(store=store, latent_hw=tuple(latents.shape[-2:]))
        if len(text) == 2:
            def predict(x, t):
                return method.predict_noise(x, t, text, ctx, added)
        else:
            boxes = regions if regions is not None else self.regions(len(crops), size, people)
            weights = blend_weights(region_masks(boxes, latents.shape[-2:])).to(method.device)

            def predict(x, t):  # x: (2, C, h, w), identical rows (negative, conditional)
                rows = x[:1].expand(len(text), -1, -1, -1)
                eps = method.predict_noise(rows, t[:1].expand(len(text)), text, ctx, added)
                return torch.cat([eps[:1], compose(eps[1:], weights)])
        latents = denoise(self.scheduler, predict, latents, steps, guidance, progress, generator)
        return decode_images(method.vae, latents)[0]

    # ----- generation inputs (the Python API and ldm_ext.generate) ----------------------
    def inputs(self, values: dict[str, Any], size: tuple[int, int] | None) -> dict:
        """Identities from ``photos``; regions from ``layout`` or ``pose`` (default side
        by side)."""
        crops = self.identities_from_photos(values["photos"])
        inputs = {"identities": torch.stack(crops)}
        if values["layout"] is not None:
            boxes = load_layout(values["layout"])
            if len(boxes) < len(crops):
                raise InputError(f"layout {values['layout']}: {len(boxes)} regions for "
                                 f"{len(crops)} identities")
            inputs["regions"] = torch.from_numpy(boxes[: len(crops)])
        elif values["pose"] is not None:
            inputs.update(self.pose_inputs(values["pose"], size))
        return inputs
