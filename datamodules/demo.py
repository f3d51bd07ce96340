"""A small synthetic dataset in our shard schema, so training runs offline.

Each image shows 1-4 cartoon people placed like ``pose_template`` with random jitter, in
front of a sky (or wall) and a ground (or floor) coloured by the caption's place: a
stick body, a skin-coloured face ellipse with hair, eyes, nose and mouth drawn exactly at its
landmarks. Landmarks and pose keypoints come from the known geometry, so they are exact;
the face boxes are those a face detector gives for such a face (``pose.detector_box`` of its
keypoints, measured on real photos), so the face regions have real data's statistics and
match the regions generation derives from a pose; crops are cut at those boxes. The masks
and character crop are what ``prepare`` writes without its parsers
(``with_fallback_masks``), so every method's view reads them. Everything is a function of
(seed, sample index).

CLI: ``python -m datamodules.demo --out DIR [--num-samples 64 --size 128 ...]``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image, ImageDraw

from datamodules.codec import encode_sample
from datamodules.schema import CROP_SIZE, SCHEMA_VERSION, Sample, validate
from datamodules.shards import ShardDataModule
from ldm_ext.perception.pose import Person, detector_box, face_box, pose_template

PLACES = ("in a park", "at the beach", "in a city street", "in a kitchen", "on a mountain")
# (sky or wall, ground or floor) per place, each varied by up to +-SCENE_JITTER: the caption
# decides the scene, so a model can learn it (random colours average to a grey nothing)
SCENES = (((110, 170, 240), (60, 160, 60)), ((150, 210, 250), (230, 200, 130)),
          ((170, 170, 180), (90, 90, 95)), ((240, 230, 200), (150, 100, 60)),
          ((120, 150, 220), (130, 120, 110)))
SCENE_JITTER = 20
WHO = {1: "a person", 2: "two people", 3: "three people", 4: "four people"}
SKIN = ((241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))
MANIFEST = "demo.json"  # the parameters the shards beside it were written with
LIMBS = ((1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
         (11, 12), (12, 13), (8, 11))  # OpenPose body indices drawn as the figure


def _jitter(person: Person, shift: np.ndarray, hw: tuple[int, int]) -> Person:
    """``person`` moved by ``shift`` (x, y); keypoints leaving the image lose confidence."""
    def moved(points: np.ndarray) -> np.ndarray:
        out = points.copy()
        out[:, :2] += shift
        outside = ((out[:, :2] < 0) | (out[:, :2] >= hw[::-1])).any(axis=1)
        out[outside | (points[:, 2] <= 0), 2] = 0.0
        return out
    return Person(body=moved(person.body), face=None if person.face is None else moved(person.face))


def _landmarks(face: np.ndarray) -> np.ndarray:
    """(5, 2) pupils, nose tip, mouth corners (image left first) of the 70 face keypoints."""
    return face[[68, 69, 30, 48, 54], :2].astype(np.float32)


def _draw(draw: ImageDraw.ImageDraw, person: Person, box: np.ndarray, marks: np.ndarray,
          rng: np.random.Generator) -> None:
    """Body sticks, hair, then the face ellipse filling ``box`` with eyes, nose, mouth."""
    (x0, y0, x1, _), (w, h) = box, box[2:] - box[:2]
    shirt = tuple(int(c) for c in rng.integers(0, 256, 3))
    for a, b in LIMBS:
        if person.body[a, 2] > 0 and person.body[b, 2] > 0:
            draw.line([tuple(person.body[a, :2]), tuple(person.body[b, :2])], shirt,
                      max(2, int(w * 0.3)))
    hair = tuple(int(c) for c in rng.integers(0, 120, 3))
    draw.ellipse([x0 + 0.05 * w, y0 - 0.25 * h, x1 - 0.05 * w, y0 + 0.3 * h], fill=hair)
    draw.ellipse(box.tolist(), fill=SKIN[rng.integers(len(SKIN))])
    r = max(1.5, (box[2] - box[0]) * 0.07)
    eye = tuple(int(c) for c in rng.integers(0, 60, 3))
    for x, y in marks[:2]:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=eye)
    x, y = marks[2]
    draw.ellipse([x - r / 2, y - r / 2, x + r / 2, y + r / 2], fill=(150, 80, 70))
    draw.line([tuple(marks[3]), tuple(marks[4])], fill=(170, 30, 40), width=max(1, int(r)))


def _vary(colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, ...]:
    """``colour`` with each channel moved by up to +-SCENE_JITTER, kept in 0..255."""
    moved = np.array(colour) + rng.integers(-SCENE_JITTER, SCENE_JITTER + 1, 3)
    return tuple(int(c) for c in np.clip(moved, 0, 255))


def _crop(image: Image.Image, box: np.ndarray) -> np.ndarray:
    """(3, 160, 160) uint8: the square around the face box, resized."""
    (cx, cy), side = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]).max()
    square = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    crop = image.crop(tuple(round(v) for v in square)).resize((CROP_SIZE, CROP_SIZE))
    return np.asarray(crop).transpose(2, 0, 1)


def demo_sample(index: int, seed: int = 0, hw: tuple[int, int] = (128, 128)) -> Sample:
    """The synthetic sample ``index`` of the dataset ``seed`` at size ``hw`` (H, W)."""
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(1, 5))
    template = pose_template(count, hw)
    spread = np.array([0.08 * hw[1] / count, 0.05 * hw[0]])
    people = [_jitter(p, rng.uniform(-spread, spread), hw) for p in template]
    place = int(rng.integers(len(PLACES)))
    sky, ground = (_vary(colour, rng) for colour in SCENES[place])
    image = Image.new("RGB", hw[::-1], sky)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(hw[0] * 0.6), hw[1], hw[0]], fill=ground)
    faces = np.stack([face_box(p, margin=0.0) for p in people])  # drawn: the keypoints' box
    boxes = np.stack([detector_box(p) for p in people])  # "detected", unclipped as detectors
    marks = np.stack([_landmarks(p.face) for p in people])
    for person, face, mark in zip(people, faces, marks):
        _draw(draw, person, face, mark, rng)
    order = np.argsort(-np.prod(boxes[:, 2:] - boxes[:, :2], axis=1), kind="stable")
    return Sample(
        key=f"{seed:04d}_{index:06d}", image=np.array(image), caption=
        f"a photo of {WHO[count]} {PLACES[place]}",
        boxes=boxes[order], landmarks=marks[order], scores=np.ones(count, np.float32),
        crops=np.stack([_crop(image, boxes[f]) for f in order]), people=people,
        face_person=order.astype(np.int64), face_model="synthetic", pose_model="synthetic")


def with_fallback_masks(sample: Sample) -> Sample:
    """``sample`` with the optional members ``prepare`` writes when no parser is available:
    masks (box + 25 %, inscribed ellipse, pose-hull character) and the main character crop.
    Benchmarks and tests use it for prepared-like samples."""
    from datamodules.prepare.annotate import face_masks
    from ldm_ext.perception.character_crop import character_on_white
    from ldm_ext.perception.character_masks import HullCharacters
    from ldm_ext.perception.segmenters import EllipseSegmenter

    bodies = HullCharacters()(sample.image, sample.boxes, sample.people, sample.face_person)
    sample.masks = face_masks(sample.image, sample.boxes, EllipseSegmenter(), bodies)
    sample.character = character_on_white(sample.image, bodies[0]) if len(bodies) else None
    sample.models = {"masks": "box+25%|ellipse|pose-hull", "character": "pose-hull"}
    return sample


def demo_shard_paths(out_dir: str | Path, num_samples: int, samples_per_shard: int) -> list[str]:
    """The shard files ``write_demo_shards`` writes for these sizes."""
    shards = -(-num_samples // samples_per_shard)
    return [str(Path(out_dir) / f"demo-{i:05d}.tar") for i in range(shards)]


def write_demo_shards(out_dir: str | Path, num_samples: int = 64, size: int = 128,
                      samples_per_shard: int = 16, seed: int = 0) -> list[str]:
    """Write the synthetic dataset as webdataset shards; return their paths.

    Deterministic in ``seed`` (byte-identical tars: fixed mtime). Each shard is written to a
    temporary name and renamed, so a concurrent or interrupted writer leaves no partial shard;
    ``demo.json`` (the parameters) is written last, so it vouches for complete shards.
    """
    paths = demo_shard_paths(out_dir, num_samples, samples_per_shard)
    manifest = Path(out_dir) / MANIFEST
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    for i, path in enumerate(paths):
        tmp = f"{path}.{os.getpid()}.tmp"
        with wds.TarWriter(tmp, encoder=False, mtime=0) as writer:
            for index in range(i * samples_per_shard,
                               min(num_samples, (i + 1) * samples_per_shard)):
                sample = with_fallback_masks(demo_sample(index, seed, (size, size)))
                writer.write(encode_sample(validate(sample)))
        os.replace(tmp, path)
    manifest.write_text(json.dumps(demo_manifest(num_samples, size, samples_per_shard, seed)))
    return paths


def demo_manifest(num_samples: int, size: int, samples_per_shard: int, seed: int) -> dict:
    """What ``demo.json`` records: the parameters and the schema version."""
    return {"num_samples": num_samples, "size": size, "samples_per_shard": samples_per_shard,
            "seed": seed, "schema": SCHEMA_VERSION, "masks": "fallback",
            "boxes": "detector_box unclipped", "scenes": "coloured by place"}


def default_root(num_samples: int, size: int, samples_per_shard: int, seed: int) -> Path:
    """Cache folder of one demo dataset: ``$IDFORGE_CACHE/demo/n.._s.._k.._seed..``."""
    from ldm_ext.tiny import cache_root  # the project's cache convention

    return cache_root() / "demo" / f"n{num_samples}_s{size}_k{samples_per_shard}_seed{seed}"


class DemoDataModule(ShardDataModule):
    """``ShardDataModule`` over the demo shards, written into ``root`` on first use.

    Args:
        root: folder of the shards (default: a cache folder named by the other arguments).
        num_samples, size, samples_per_shard, data_seed: the demo dataset (``write_demo_shards``).
        num_workers: 0 by default, so demo batches do not depend on the machine.
        **kwargs: the other ``ShardDataModule`` arguments.
    """

    def __init__(self, root: str | None = None, num_samples: int = 64, size: int = 128,
                 samples_per_shard: int = 16, data_seed: int = 0, resolution: int = 128,
                 num_workers: int = 0, **kwargs):
        folder = str(root or default_root(num_samples, size, samples_per_shard, data_seed))
        super().__init__(demo_shard_paths(folder, num_samples, samples_per_shard),
                         resolution=resolution, num_workers=num_workers, **kwargs)
        self.demo = dict(out_dir=folder, num_samples=num_samples, size=size,
                         samples_per_shard=samples_per_shard, seed=data_seed)

    def prepare_data(self) -> None:
        """Write the demo shards unless ``root`` holds them for these parameters."""
        manifest = Path(self.demo["out_dir"]) / MANIFEST
        wanted = demo_manifest(**{k: v for k, v in self.demo.items() if k != "out_dir"})
        if not manifest.exists() or json.loads(manifest.read_text()) != wanted or \
                not all(os.path.exists(p) for p in self.hparams.shards):
            write_demo_shards(**self.demo)

    def build_dataset(self, start: int = 0):
        self.prepare_data()  # also without a Trainer; a no-op once written
        return super().build_dataset(start)


def main(argv: list[str] | None = None) -> None:
    """CLI: write the demo shards into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples-per-shard", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_demo_shards(args.out, args.num_samples, args.size, args.samples_per_shard,
                              args.seed)
    print(f"wrote {args.num_samples} samples in {len(paths)} shards to {args.out}")


if __name__ == "__main__":
    main()


def random_batch(batch_size: int, resolution: int, slots: int = 4, seed: int = 0) -> dict:
    """Random tensors shaped like an InstantFamily view's float batch, 2 valid faces per
    image (unit tests and step benchmarks, where the content does not matter)."""
    gen = torch.Generator().manual_seed(seed)
    valid = torch.zeros(batch_size, slots, dtype=torch.bool)
    valid[:, :2] = True
    boxes = torch.tensor([[0.1, 0.2, 0.35, 0.5], [0.6, 0.2, 0.85, 0.5]] + [[0, 0, 0, 0]] *
                         (slots - 2)).expand(batch_size, -1, -1).clone()
    return {
        "pixel_values": torch.rand(batch_size, 3, resolution, resolution, generator=gen) * 2 - 1,
        "control": torch.rand(batch_size, 3, resolution, resolution, generator=gen),
        "caption": ["a photo of two people in a park"] * batch_size,
        "face_crops": torch.rand(batch_size, slots, 3, 160, 160, generator=gen) * 2 - 1,
        "face_boxes": boxes,
        "face_valid": valid,
    }
