"""Benchmark runs on the FastComposer protocol (BENCHMARK.md) and each paper's metrics.

Generate and score::

    python eval.py --config configs/eval/fastcomposer_single.yaml --checkpoint runs/x \
        subjects.root=data/celeba_test_single [key=value ...]

Score images made by anything (another repository's outputs included)::

    python eval.py --images DIR --references SUBJECTS_DIR [--config X.yaml] [key=value ...]

Subjects (``--references`` / ``subjects.root``): ``<root>/<id>/<photo>`` (largest face of
the first photo, sorted by name) and ``<root>/classes.txt`` with lines ``<id> <class
word>`` (FastComposer's test-set layout; the 15 CelebA ids default to BENCHMARK.md's
classes). ``subjects.root=demo`` writes offline demo subjects (skimage astronaut and the
faces of insightface's t1.jpg).

Image naming (both modes): ``<id>[+<id>...]__p<prompt index, 2 digits>__<k>.png``, e.g.
``000001+001603__p07__3.png`` is image k=3 of multi prompt 7 for that pair, the ids in slot
order. In ``--images`` mode, a ``manifest.jsonl`` in DIR (lines as eval.py writes them, at
least ``file`` and ``subjects``; ``prompt_index``/``category``/``clip_prompt`` are filled
from the prompt set when absent) takes precedence over the file names.

Outputs in ``<output_dir>/<name>/``: ``images/`` + ``manifest.jsonl`` (generation mode;
a rerun skips finished images and advances the seeded generator past them, so results
match an uninterrupted run), ``metrics.csv`` (one row per image), ``summary.json`` (mean ±
population std per metric, per prompt category and per number of subjects; mixing
matrices), ``report.md`` with tables, ``grids/`` and ``plots/``; a wandb table when
``wandb=true``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from callbacks.report import write_outputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
NAME_PATTERN = re.compile(r"^(?P<ids>.+?)__p(?P<index>\d+)__(?P<k>\d+)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="eval YAML (configs/eval/*.yaml)")
    parser.add_argument("--checkpoint", help="run folder, or its trainable .safetensors/.ckpt")
    parser.add_argument("--images", help="score this folder instead of generating")
    parser.add_argument("--references", help="subjects folder (overrides subjects.root)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. generation.steps=25")
    args = parser.parse_args(argv)
    if bool(args.images) == bool(args.checkpoint):
        parser.error("give exactly one of --checkpoint (generate) or --images (score a folder)")
    if args.checkpoint and not args.config:
        parser.error("--checkpoint needs --config")
    return args


# ----- subjects and the plan of images ---------------------------------------------------
def image_name(ids: list[str], prompt_index: int, k: int) -> str:
    """File name of image ``k`` of prompt ``prompt_index`` for subjects ``ids``."""
    return f"{'+'.join(ids)}__p{prompt_index:02d}__{k}.png"


def read_class_words(path: Path) -> dict[str, str]:
    """``<id> <class word>`` lines (blank lines and ``#`` comments ignored)."""
    words = {}
    for line in path.read_text().splitlines():
        parts = line.split("#")[0].split()
        if len(parts) >= 2:
            words[parts[0]] = " ".join(parts[1:])
    return words


def load_subjects(subjects, out_dir: Path) -> dict[str, dict]:
    """``{id: {"photo": path, "class_word": word}}`` from a subjects config."""
    from callbacks.prompts import FASTCOMPOSER_CLASSES

    root = Path(subjects.root)
    if subjects.root == "demo":
        root = write_demo_subjects(out_dir / "subjects")
    if not root.is_dir():
        raise FileNotFoundError(f"subjects folder {root} not found (<root>/<id>/<photo>)")
    class_file = Path(subjects.class_words) if subjects.class_words else root / "classes.txt"
    words = {**FASTCOMPOSER_CLASSES, **(read_class_words(class_file)
                                        if class_file.is_file() else {})}
    ids = list(subjects.ids) if subjects.ids else sorted(p.name for p in root.iterdir()
                                                          if p.is_dir())
    found = {}
    for sid in ids:
        photos = sorted(p for p in (root / sid).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not photos:
            raise FileNotFoundError(f"subject {sid}: no photo in {root / sid}")
        if sid not in words:
            raise KeyError(f"subject {sid}: no class word in {class_file}")
        found[sid] = {"photo": str(photos[0]), "class_word": words[sid]}
    return found


def write_demo_subjects(folder: Path) -> Path:
    """Offline subjects: skimage's astronaut (woman) and the faces of insightface's t1.jpg
    (person), each as a 256x256 photo around the face. Returns the folder."""
    import os

    import insightface
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    group = np.asarray(Image.open(os.path.join(os.path.dirname(insightface.__file__),
                                               "data", "images", "t1.jpg")).convert("RGB"))
    photos = {"astronaut": (skimage.data.astronaut()[0:300, 80:380], "woman")}
    boxes = [(464, 261, 570, 405), (54, 262, 165, 397), (908, 61, 1013, 201)]  # t1 faces
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy, half = (x0 + x1) // 2, (y0 + y1) // 2, (y1 - y0)
        crop = group[max(0, cy - half):cy + half, max(0, cx - half):cx + half]
        photos[f"t1_{k}"] = (crop, "person")
    for sid, (array, _) in photos.items():
        (folder / sid).mkdir(exist_ok=True)
        Image.fromarray(array).resize((256, 256), Image.BICUBIC).save(folder / sid / "0.png")
    (folder / "classes.txt").write_text("".join(f"{s} {w}\n" for s, (_, w) in photos.items()))
    return folder


def subject_groups(ids: list[str], n: int, limit: int | None, seed: int) -> list[tuple]:
    """All sorted n-combinations of ``ids``, or ``limit`` of them sampled with ``seed``."""
    groups = list(itertools.combinations(sorted(ids), n))
    if limit is not None and limit < len(groups):
        groups = sorted(random.Random(seed).sample(groups, limit))
    return groups


def make_record(ids: list[str], words: list[str], prompt, k: int, marker: str) -> dict:
    """Manifest record of one image."""
    from callbacks.prompts import fill

    return {"file": image_name(ids, prompt.index, k), "subjects": ids, "class_words": words,
            "prompt_index": prompt.index, "category": prompt.category, "k": k,
            "prompt": fill(prompt.template, words, marker),
            "clip_prompt": fill(prompt.template, words)}


def plan(cfg, subjects: dict[str, dict]) -> list[dict]:
    """Records of every image of the run, in generation order (group, prompt, k)."""
    from callbacks.prompts import prompt_list

    prompts = prompt_list(cfg.prompts.set, cfg.prompts.limit)
    records = []
    for n in cfg.subjects.num_ids:
        for group in subject_groups(list(subjects), n, cfg.subjects.max_groups,
                                    cfg.generation.seed):
            words = [subjects[s]["class_word"] for s in group]
            records += [make_record(list(group), words, p, k, cfg.prompts.marker)
                        for p in prompts for k in range(cfg.generation.images_per_prompt)]
    return records


def records_from_folder(folder: Path, cfg, words: dict[str, str]) -> list[dict]:
    """Records of the images of a foreign folder: its manifest.jsonl or the file names."""
    from callbacks.prompts import prompt_list

    prompts = {p.index: p for p in prompt_list(cfg.prompts.set)}
    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        raw = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    else:
        raw = [_parse_name(p.name) for p in sorted(folder.iterdir())
               if p.suffix.lower() in IMAGE_SUFFIXES]
    records = []
    for entry in raw:
        ids = list(entry["subjects"])
        prompt = prompts[int(entry.get("prompt_index", 0))]
        base = make_record(ids, [words.get(s, "person") for s in ids], prompt,
                           int(entry.get("k", 0)), cfg.prompts.marker)
        records.append({**base, **entry})
    return records


def _parse_name(name: str) -> dict:
    match = NAME_PATTERN.match(Path(name).stem)
    if match is None:
        raise ValueError(f"image '{name}' does not follow <id>[+<id>]__p<index>__<k>.png "
                         "and the folder has no manifest.jsonl")
    return {"file": name, "subjects": match["ids"].split("+"),
            "prompt_index": int(match["index"]), "k": int(match["k"])}


# ----- generation (resumable) -------------------------------------------------------------
def load_method(checkpoint: str):
    """A trained method from a run folder, its ``trainable.safetensors`` or a Lightning
    ``.ckpt`` inside it (``<run>/checkpoints/*.ckpt``)."""
    from ldm_ext.methods.loading import RUN_CONFIG, load_run

    path = Path(checkpoint)
    if path.is_dir():
        return load_run(path)
    run_dir = next((p for p in path.parents if (p / RUN_CONFIG).is_file()), None)
    if run_dir is None:
        raise FileNotFoundError(f"{path}: no run folder ({RUN_CONFIG}) above this file")
    return load_run(run_dir, weights=path)


def make_pipeline(method):
    """The sampling pipeline of a method (identity crops by MTCNN at its encoder's size)."""
    from ldm_ext.face import MTCNNDetector

    name = method.cfg.method.name
    if name == "instantfamily":
        from ldm_ext.pipelines.instantfamily import InstantFamilyPipeline

        return InstantFamilyPipeline(method, MTCNNDetector(
            crop_size=method.face_encoder.input_size, device=str(method.device)))
    raise ValueError(f"eval.py has no pipeline for method {name!r} yet")


def read_manifest(path: Path) -> dict[str, dict]:
    """Finished records by file name (a torn last line from an interrupt is ignored)."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["file"]] = record
    return done


def generate(cfg, method, subjects: dict[str, dict], records: list[dict], out_dir: Path) -> None:
    """Generate every planned image not already in the manifest, appending as it goes.

    One generator seeded ``generation.seed`` serves the whole run; a skipped image still
    draws its initial latents (the pipeline's only random draw with DDIM) so that a resumed
    run produces exactly the images of an uninterrupted one."""
    import torch

    g = cfg.generation
    image_dir, manifest = out_dir / "images", out_dir / "manifest.jsonl"
    image_dir.mkdir(parents=True, exist_ok=True)
    done = {f for f in read_manifest(manifest) if (image_dir / f).is_file()}
    pipe = make_pipeline(method)
    crops = {sid: pipe.identities_from_photos([Image.open(s["photo"])])[0]
             for sid, s in subjects.items()}
    generator = torch.Generator().manual_seed(g.seed)
    latent = g.size // method.backbone.vae_scale
    shape = (1, method.unet.config.in_channels, latent, latent)
    with manifest.open("a") as handle:
        for record in records:
            if record["file"] in done:
                torch.randn(shape, generator=generator)
                continue
            ids = torch.stack([crops[s] for s in record["subjects"]])
            image = pipe(record["prompt"], ids, size=(g.size, g.size), steps=g.steps,
                         guidance=g.guidance, generator=generator, progress=False)
            image.save(image_dir / record["file"])
            handle.write(json.dumps({**record, "seed": g.seed}) + "\n")
            handle.flush()


# ----- scoring and outputs ----------------------------------------------------------------
def score_folder(cfg, image_dir: Path, records: list[dict], subjects: dict[str, dict],
                 device: str) -> tuple[list[dict], list[np.ndarray]]:
    """Metrics rows and similarity matrices of every record's image, in chunks."""
    from callbacks.scoring import build_scorers, embed_references, score_images

    scorers = build_scorers(cfg.scoring, device)
    photos = {sid: np.asarray(Image.open(s["photo"]).convert("RGB"))
              for sid, s in subjects.items()}
    refs = embed_references(scorers, photos)
    rows, sims, chunk = [], [], max(1, cfg.scoring.batch_size) * 4
    for start in range(0, len(records), chunk):
        part = records[start:start + chunk]
        images = [np.asarray(Image.open(image_dir / r["file"]).convert("RGB")) for r in part]
        new_rows, new_sims = score_images(scorers, images, part, refs)
        rows += new_rows
        sims += new_sims
    return rows, sims


# ----- entry ------------------------------------------------------------------------------
def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(args: argparse.Namespace) -> Path:
    """Generate (``--checkpoint``) or take a folder (``--images``), score, write outputs."""
    import torch

    from ldm_ext.eval_config import load_eval_config

    overrides = list(args.overrides)
    if args.references:
        overrides.append(f"subjects.root={args.references}")
    if args.images and not any(o.startswith("name=") for o in overrides):
        overrides.append(f"name={Path(args.images).resolve().name}")
    cfg = load_eval_config(args.config, overrides)
    out_dir = Path(cfg.output_dir) / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    subjects = load_subjects(cfg.subjects, out_dir)
    device = resolve_device(cfg.generation.device)
    if args.images:
        image_dir = Path(args.images)
        words = {sid: s["class_word"] for sid, s in subjects.items()}
        records = records_from_folder(image_dir, cfg, words)
    else:
        image_dir, records = out_dir / "images", plan(cfg, subjects)
        torch.manual_seed(cfg.generation.seed)  # random-init parts (demo runs) load alike
        generate(cfg, load_method(args.checkpoint).to(device), subjects, records, out_dir)
    rows, sims = score_folder(cfg, image_dir, records, subjects, device)
    write_outputs(cfg, out_dir, image_dir, rows, sims)
    print(f"wrote {out_dir} ({len(rows)} images)")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    from callbacks.scorers import ClipModelMissing
    from ldm_ext.config import ConfigError
    from ldm_ext.face import FaceModelMissing

    args = parse_args(argv)
    try:
        run(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (ClipModelMissing, FaceModelMissing) as err:
        print(f"model missing: {err}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
