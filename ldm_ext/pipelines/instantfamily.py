"""Generate with InstantFamily: 1 to many identities, a pose template and any prompt.

Identity embeddings come from one photo per identity (largest face) or from several
faces of one group photo; face regions come from the pose template (face keypoint box +
25 %), so identities and pose have independent sources (Sec. 3.5). Works for more
identities than the N slots used in training: the projector is per face and the masks
are built for however many faces are given.

Command line::

    python -m ldm_ext.pipelines.instantfamily --run runs/demo --ids a.jpg b.jpg \
        --prompt "a photo of two people on the beach" --out out.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ldm_ext.attention import AttentionStore
from ldm_ext.face.align import tensor_to_uint8
from ldm_ext.pipelines.sampling import decode_images, denoise, inference_scheduler, to_tensor
from ldm_ext.pose import (SLOT_COLORS, Person, face_box, load_pose, pose_template,
                          render_control_image)


class InstantFamilyPipeline:
    """Wraps a trained ``InstantFamily`` module (weights loaded) for sampling."""

    def __init__(self, method, detector=None, scheduler: str = "ddim") -> None:
        self.method = method
        self.detector = detector
        self.scheduler = inference_scheduler(method.backbone.scheduler, scheduler)

    # ----- identities ------------------------------------------------------------------
    def identities_from_photos(self, photos: list[Image.Image]) -> torch.Tensor:
        """Largest face of each photo -> (K, 3, S, S) aligned crops in [-1, 1]."""
        crops = []
        for i, photo in enumerate(photos):
            faces = self._detect(photo)
            if len(faces) == 0:
                raise ValueError(f"no face found in identity photo {i}")
            crops.append(faces.crops[0])
        return torch.stack(crops)

    def identities_from_group(self, photo: Image.Image, indices: list[int] | None = None):
        """Several faces of one group photo (largest first, or ``indices``) -> (K, 3, S, S)."""
        faces = self._detect(photo)
        if len(faces) == 0:
            raise ValueError("no face found in the group photo")
        return faces.crops if indices is None else faces.crops[indices]

    def _detect(self, photo: Image.Image):
        if self.detector is None:
            raise ValueError("identity photos need a face detector (detector=...)")
        return self.detector.detect(np.asarray(photo.convert("RGB")))

    # ----- generation ------------------------------------------------------------------
    def control_inputs(self, people: list[Person], num_ids: int, size: tuple[int, int]):
        """Control image (1, 3, H, W) with circles for the first ``num_ids`` people, and
        their face boxes (1, K, 4) normalised, from the face keypoints (no margin here:
        the mask builder adds the configured 25 %)."""
        if len(people) < num_ids:
            raise ValueError(f"pose template has {len(people)} people for {num_ids} identities")
        slots = [k if k < num_ids else None for k in range(len(people))]
        height, width = size
        control = to_tensor(render_control_image(people, size, slots))[None]
        boxes = []
        for person in people[:num_ids]:
            box = face_box(person, margin=0.0)
            if box is None:
                raise ValueError("a selected person of the pose template has no face keypoints")
            boxes.append(np.asarray(box, dtype=np.float32) / [width, height, width, height])
        return control, torch.from_numpy(np.stack(boxes))[None]

    @torch.no_grad()
    def __call__(self, prompt: str, id_crops: torch.Tensor, people: list[Person] | None = None,
                 size: tuple[int, int] = (512, 512), steps: int = 50, guidance: float = 7.5,
                 generator: torch.Generator | None = None, negative_prompt: str = "",
                 progress: bool = True, store: AttentionStore | None = None) -> Image.Image:
        """One image of ``len(id_crops)`` identities placed on the pose template.
        ``size`` is (height, width); the first ``len(id_crops)`` people get the identities.
        ``store`` records the attention maps of the layers it wants at every step (batch:
        unconditional, conditional), e.g. for ``callbacks.images.attention_overlay``."""
        method, device = self.method, self.method.device
        num_ids = id_crops.shape[0]
        people = people if people is not None else pose_template(num_ids, size)
        control, boxes = self.control_inputs(people, num_ids, size)
        scale = method.backbone.vae_scale
        latent_hw = (size[0] // scale, size[1] // scale)
        text, _ = method.encode_text([negative_prompt, prompt])
        crops = id_crops[None].expand(2, -1, -1, -1, -1).to(device)
        valid = torch.ones(2, num_ids, dtype=torch.bool, device=device)
        stack, ctx = method.conditioning(text, crops, boxes.expand(2, -1, -1).to(device),
                                         valid, latent_hw)
        ctx.store = store
        control = control.expand(2, -1, -1, -1).to(device)
        shape = (1, method.unet.config.in_channels, *latent_hw)
        latents = torch.randn(shape, generator=generator, device="cpu").to(device, text.dtype)
        latents = denoise(self.scheduler,
                          lambda x, t: method.predict_noise(x, t, stack, ctx, control),
                          latents, steps, guidance, progress)
        return decode_images(method.vae, latents)[0]


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
        framed = ImageOps.expand(Image.fromarray(thumb), border=2, fill=SLOT_COLORS[slot])
        canvas.paste(framed, (2 + slot * (side + 6), height - side - 6))
    return canvas


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder written by train.py")
    ids = parser.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", nargs="+", help="one photo per identity (largest face used)")
    ids.add_argument("--group", help="one group photo: its faces are the identities")
    parser.add_argument("--num-ids", type=int, default=None, help="with --group: how many")
    pose = parser.add_mutually_exclusive_group()
    pose.add_argument("--pose", help="OpenPose-style JSON template (default: side by side)")
    pose.add_argument("--pose-image", help="photo to estimate the pose template from "
                      "(controlnet_aux OpenPose; needs lllyasviel/Annotators weights)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", default="instantfamily.png")
    parser.add_argument("--size", type=int, default=None, help="default: training resolution")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _pose(args: argparse.Namespace, resolution: int):
    """Pose template and (H, W): from JSON (its own size unless --size), from a photo via
    OpenPose, or the default side-by-side template at --size / the training resolution."""
    side = args.size or resolution
    if args.pose_image:
        from ldm_ext.pose import OpenPoseEstimator

        photo = Image.open(args.pose_image).convert("RGB").resize((side, side))
        return OpenPoseEstimator()(np.asarray(photo)), (side, side)
    if args.pose:
        people, hw = load_pose(args.pose)
        if hw is not None and not args.size:
            return people, hw
        return people, (side, side)
    return None, (side, side)


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry: load a run, read identities and pose, write one image."""
    from ldm_ext.face import build_face_detector
    from ldm_ext.methods.loading import load_run

    args = _parse(argv)
    method = load_run(args.run)
    cfg = method.cfg
    pipe = InstantFamilyPipeline(method, detector=build_face_detector("mtcnn"))
    if args.ids:
        crops = pipe.identities_from_photos([Image.open(p) for p in args.ids])
    else:
        crops = pipe.identities_from_group(Image.open(args.group))[: args.num_ids]
    people, size = _pose(args, cfg.data.resolution)
    image = pipe(args.prompt, crops, people, size,
                 steps=args.steps or cfg.method.sample_steps,
                 guidance=args.guidance or cfg.method.guidance_scale,
                 generator=torch.Generator().manual_seed(args.seed))
    image.save(args.out)
    print(f"wrote {args.out} ({crops.shape[0]} identities)")
    return Path(args.out)


if __name__ == "__main__":
    main()
