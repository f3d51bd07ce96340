"""Generate with InstantFamily: 1 to many identities, a pose template and any prompt.

Identity embeddings come from one photo per identity (largest face) or from several
faces of one group photo; face regions come from the pose template (face keypoint box
mapped to the detector box training used, + 25 %), so identities and pose have independent
sources (Sec. 3.5). Works for more identities than the N slots used in training: the
projector is per face and the masks are built for however many faces are given.

Command line (``ldm_ext.generate`` with the inputs ``InstantFamilyConfig.GENERATION_INPUTS``
declares)::

    python -m ldm_ext.generate --run runs/demo --ids a.jpg b.jpg \
        --prompt "a photo of two people on the beach" --out out.png
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ldm_ext.attention import AttentionStore
from ldm_ext.cli import InputError
from ldm_ext.face.align import tensor_to_uint8
from ldm_ext.pipelines.base import MethodPipeline
from ldm_ext.pipelines.options import photo_name, read_photo
from ldm_ext.pipelines.sampling import decode_images, denoise, initial_latents, to_tensor
from ldm_ext.perception.pose import (DEFAULT_POSE_WEIGHTS, OpenPoseEstimator, Person, detector_box,
                                     fit_people, pose_template, render_control_image, slot_color)


class InstantFamilyPipeline(MethodPipeline):
    """Wraps a trained ``InstantFamily`` module (weights loaded) for sampling.

    ``detector``: face detector for identity photos (default: MTCNN cropping at the
    method's face-encoder size, built on first use)."""

    def __init__(self, method, detector=None, scheduler: str = "ddim") -> None:
        super().__init__(method, scheduler)
        self.detector = detector

    # ----- identities ------------------------------------------------------------------
    def identity(self, photo: Image.Image) -> torch.Tensor:
        """Largest face of a photo -> (3, S, S) aligned crop in [-1, 1]."""
        faces = self._detect(photo)
        if len(faces) == 0:
            raise InputError("no face found in the identity photo")
        return faces.crops[0]

    def identities_from_group(self, photo: Image.Image, indices: list[int] | None = None):
        """Several faces of one group photo (largest first, or ``indices``) -> (K, 3, S, S)."""
        faces = self._detect(photo)
        if len(faces) == 0:
            raise InputError("no face found in the group photo")
        return faces.crops if indices is None else faces.crops[indices]

    def _detect(self, photo: Image.Image):
        if self.detector is None:
            from ldm_ext.face import MTCNNDetector

            self.detector = MTCNNDetector(crop_size=self.method.face_encoder.input_size,
                                          device=str(self.method.device))
        return self.detector.detect(np.asarray(photo.convert("RGB")))

    def blank_face(self) -> torch.Tensor:
        """One empty face slot (1, 3, S, S) at the face encoder's input side."""
        side = self.method.face_encoder.input_size
        return torch.zeros(1, 3, side, side)

    def legend(self, identities: torch.Tensor, size: tuple[int, int]) -> Image.Image:
        return control_legend(identities, size)

    # ----- generation ------------------------------------------------------------------
    def control_inputs(self, people: list[Person], num_ids: int, size: tuple[int, int]):
        """Control image (1, 3, H, W) with circles for the first ``num_ids`` people, and
        their face boxes (1, K, 4) normalised: the keypoints' box mapped to the detector
        box training's masks come from (``pose.detector_box``; no margin here: the mask
        builder adds the configured 25 %)."""
        if len(people) < num_ids:
            raise ValueError(f"pose template has {len(people)} people for {num_ids} identities")
        slots = [k if k < num_ids else None for k in range(len(people))]
        height, width = size
        control = to_tensor(render_control_image(people, size, slots))[None]
        boxes = []
        for person in people[:num_ids]:
            box = detector_box(person)
            if box is None:
                raise ValueError("a selected person of the pose template has no face keypoints")
            boxes.append(np.asarray(box, dtype=np.float32) / [width, height, width, height])
        return control, torch.from_numpy(np.stack(boxes))[None]

    @torch.no_grad()
    def __call__(self, prompt: str, identities, *, size: tuple[int, int] = (512, 512),
                 steps: int = 50, guidance: float = 7.5,
                 generator: torch.Generator | None = None, negative_prompt: str = "",
                 progress: bool = True, store: AttentionStore | None = None,
                 people: list[Person] | None = None) -> Image.Image:
        """One image of the identities (K, 3, S, S) (or a list of (3, S, S) crops) placed on
        the pose template ``people`` (default: side by side); the first K people get them;
        None: a prompt-only image (one person, face slot empty, as an export's card draws).
        ``size`` is (height, width). ``store`` records the attention maps of the layers it
        wants at every step (batch: one entry per guidance branch, the conditional last),
        e.g. for ``callbacks.images.attention_overlay``. Guidance follows
        ``method.identity_guidance`` / ``identity_scale`` (see ``branches``)."""
        method, device = self.method, self.method.device
        crops = self.stacked(identities)
        faces = crops is not None  # none: one person of the pose, its face slot left empty
        crops = crops if faces else self.blank_face()
        num_ids = crops.shape[0]
        people = people if people is not None else pose_template(num_ids, size)
        control, boxes = self.control_inputs(people, num_ids, size)
        latent_hw = self.latent_shape(size)[-2:]
        prompts, valid, scales = self.branches(prompt, negative_prompt, num_ids, guidance)
        valid = valid if faces else torch.zeros_like(valid)
        k = len(prompts)
        text, pooled = method.encode_text(prompts)
        stack, ctx = method.conditioning(text, crops[None].expand(k, -1, -1, -1, -1).to(device),
                                         boxes.expand(k, -1, -1).to(device),
                                         valid.to(device), latent_hw)
        ctx.store = store
        control = control.expand(k, -1, -1, -1).to(device)
        added = method.added_cond_kwargs(pooled, size)
        latents = initial_latents(self.latent_shape(size), generator, device, text.dtype)
        latents = denoise(self.scheduler,
                          lambda x, t: method.predict_noise(x, t, stack, ctx, control, added),
                          latents, steps, scales, progress, generator)
        return decode_images(method.vae, latents)[0]

    def branches(self, prompt: str, negative_prompt: str, num_ids: int, guidance: float):
        """The guidance branches, least conditioned first: (prompts, face validity (K, N),
        guidance scales for ``sampling.guide``).

        Default (the paper): (negative prompt + faces, prompt + faces), scale g: the faces
        are in both branches, so only the prompt is guided. ``identity_guidance``: the
        unconditional branch also drops the faces (empty slots), so identity is guided
        with the prompt; with ``identity_scale`` s > 0 a middle branch (negative prompt +
        faces) gives identity its own scale: ε_u + s (ε_id − ε_u) + g (ε_c − ε_id)."""
        cfg = self.method.cfg.method
        faces, none = [True] * num_ids, [False] * num_ids
        if not cfg.identity_guidance:
            rows, prompts, scales = [faces, faces], [negative_prompt, prompt], [guidance]
        elif cfg.identity_scale > 0:
            rows = [none, faces, faces]
            prompts = [negative_prompt, negative_prompt, prompt]
            scales = [cfg.identity_scale, guidance]
        else:
            rows, prompts, scales = [none, faces], [negative_prompt, prompt], [guidance]
        return prompts, torch.tensor(rows, dtype=torch.bool), scales

    # ----- generation inputs (the Python API and ldm_ext.generate) ----------------------
    def inputs(self, values: dict[str, Any], size: tuple[int, int] | None) -> dict:
        """Identities from ``photos`` / ``group``; pose template (and its size) from
        ``pose`` / ``pose_image``, else the default side-by-side template. A photo
        without a face, --num-ids beyond the group photo's faces, a malformed pose or one
        with too few people: an InputError; OpenPose weights missing for ``pose_image``:
        ``PoseModelMissing`` (a UserError)."""
        inputs = {"identities": self._identities(values)}
        if values["pose_image"] is not None:
            hw = size or (self.method.cfg.data.resolution,) * 2
            photo = read_photo(values["pose_image"], "--pose-image")
            folder = values["pose_weights"]
            estimator = OpenPoseEstimator(folder or DEFAULT_POSE_WEIGHTS,
                                          local_files_only=folder is not None)
            people = estimator(np.asarray(photo))
            inputs["people"] = fit_people(people, (photo.height, photo.width), hw)
        elif values["pose"] is not None:
            inputs.update(self.pose_inputs(values["pose"], size))
        if "people" in inputs:
            source = values["pose"] or "--pose-image"
            _check_people(inputs["people"], len(inputs["identities"]), str(source))
        return inputs

    def _identities(self, values: dict[str, Any]) -> torch.Tensor:
        """(K, 3, S, S) crops of the ``photos`` or of ``num_ids`` faces of the group photo."""
        if values["photos"]:
            return torch.stack(self.identities_from_photos(values["photos"]))
        group, count = values["group"], values["num_ids"]
        name = photo_name(group, 0, "--group")
        try:
            crops = self.identities_from_group(read_photo(group, "--group"))
        except InputError as err:
            raise InputError(f"{name}: {err}") from None
        if count is not None and count > len(crops):
            raise InputError(f"{name}: {len(crops)} faces found, --num-ids asks for {count}")
        return crops[:count]


def _check_people(people: list[Person], num_ids: int, source: str) -> None:
    """The pose template ``source`` has a person with face or head keypoints per identity."""
    if len(people) < num_ids:
        raise InputError(f"pose {source}: {len(people)} people for {num_ids} identities")
    faceless = [k for k, person in enumerate(people[:num_ids]) if detector_box(person) is None]
    if faceless:
        raise InputError(f"pose {source}: person {faceless[0]} (of the first {num_ids}, who "
                         "take the identities) has no face or head keypoints")


def control_legend(id_crops: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """What a generation of ``id_crops`` on the default pose template is conditioned on:
    its control image (skeletons, a circle of slot colour k on face k, as
    ``InstantFamilyPipeline.control_inputs`` draws it) with identity k's crop framed in
    that colour along the bottom edge. ``size`` is (height, width)."""
    height, width = size
    people = pose_template(len(id_crops), size)
    canvas = Image.fromarray(render_control_image(people, size,
                                                  list(range(len(id_crops)))))
    side = max(8, min(height, width) // 5)
    for slot, thumb in enumerate(tensor_to_uint8(id_crops, side)):  # (side, side, 3)
        framed = ImageOps.expand(Image.fromarray(thumb), border=2, fill=slot_color(slot))
        canvas.paste(framed, (2 + slot * (side + 6), height - side - 6))
    return canvas
