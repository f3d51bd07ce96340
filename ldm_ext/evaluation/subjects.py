"""Benchmark subjects and the plan of images (docs/benchmark.md), shared by ``eval.py``.

Subjects: ``<root>/<id>/<photo>`` (the first photo, sorted by name) and
``<root>/classes.txt`` with lines ``<id> <class word>`` (FastComposer's test-set layout).
Every image has a manifest record and a file name
``<id>[+<id>...]__p<prompt index, 2 digits>__<k>.png``, the ids in slot order.
"""
from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ldm_ext.cli import InputError
from ldm_ext.config import ConfigError
from ldm_ext.evaluation.prompts import fill, prompt_list

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
NAME_PATTERN = re.compile(r"^(?P<ids>.+?)__p(?P<index>\d+)__(?P<k>\d+)$")


# FastComposer's 15 CelebA test subjects and their class words (docs/benchmark.md,
# "Subject folders").
FASTCOMPOSER_CLASSES = {
    "000001": "man", "000181": "man", "000268": "man", "000612": "woman", "000667": "woman",
    "001603": "woman", "001854": "man", "002088": "woman", "002464": "woman",
    "002782": "man", "002880": "woman", "002929": "woman", "002937": "woman",
    "003785": "man", "004153": "woman",
}


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
    root = Path(subjects.root)
    if subjects.root == "demo":
        root = write_demo_subjects(out_dir / "subjects")
    if not root.is_dir():
        raise ConfigError(f"subjects.root={subjects.root!r}: no such folder "
                          "(<root>/<id>/<photo>)")
    class_file = Path(subjects.class_words) if subjects.class_words else root / "classes.txt"
    words = {**FASTCOMPOSER_CLASSES, **(read_class_words(class_file)
                                        if class_file.is_file() else {})}
    ids = list(subjects.ids) if subjects.ids else sorted(p.name for p in root.iterdir()
                                                          if p.is_dir())
    found = {}
    for sid in ids:
        photos = sorted(p for p in (root / sid).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not photos:
            raise InputError(f"subject {sid}: no photo in {root / sid}")
        if sid not in words:
            raise InputError(f"subject {sid}: no class word in {class_file}")
        found[sid] = {"photo": str(photos[0]), "class_word": words[sid]}
    return found


def write_demo_subjects(folder: Path) -> Path:
    """Offline subjects: skimage's astronaut (woman) and the faces of insightface's t1.jpg
    (person), each as a 256x256 photo around the face. Returns the folder. A folder that
    has them already (``classes.txt`` is written last) is left as it is."""
    import os

    import insightface
    import skimage.data

    if (folder / "classes.txt").is_file():
        return folder
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
    return {"file": image_name(ids, prompt.index, k), "subjects": ids, "class_words": words,
            "prompt_index": prompt.index, "category": prompt.category, "k": k,
            "prompt": fill(prompt.template, words, marker),
            "clip_prompt": fill(prompt.template, words)}


def plan(cfg, subjects: dict[str, dict]) -> list[dict]:
    """Records of every image of the run, in generation order (group, prompt, k)."""
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
    """Records of the images of a foreign folder: its manifest.jsonl or the file names.

    ``words``: class word by subject id (the references). Refused with an InputError
    naming the file, before any model loads: no images, a name outside the scheme, a
    prompt index outside ``prompts.set``, a subject id missing from ``words``."""
    if not folder.is_dir():
        raise InputError(f"--images {folder}: no such folder")
    manifest = folder / "manifest.jsonl"
    raw = read_entries(manifest) if manifest.is_file() else names_in(folder)
    if not raw:
        raise InputError(f"--images {folder}: no images to score (no {', '.join(IMAGE_SUFFIXES)} "
                         "files and no manifest.jsonl)")
    prompts = {p.index: p for p in prompt_list(cfg.prompts.set)}
    _check_entries(folder, raw, prompts, cfg.prompts.set, words)
    records = []
    for entry in raw:
        ids = list(entry["subjects"])
        prompt = prompts[int(entry.get("prompt_index", 0))]
        base = make_record(ids, [words[s] for s in ids], prompt, int(entry.get("k", 0)),
                           cfg.prompts.marker)
        records.append({**base, **entry})
    return records


def read_entries(manifest: Path) -> list[dict]:
    """The entries of a manifest.jsonl; a line that is not a record is an InputError."""
    entries = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{manifest} line {number}: not JSON ({err.msg})") from None
        if not isinstance(entry, dict) or not {"file", "subjects"} <= entry.keys():
            raise InputError(f"{manifest} line {number}: needs at least \"file\" and "
                             "\"subjects\"")
        entries.append(entry)
    return entries


def names_in(folder: Path) -> list[dict]:
    """Entries from the image file names of ``folder``; names outside the scheme are an
    InputError listing them."""
    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    bad = [name for name in files if NAME_PATTERN.match(Path(name).stem) is None]
    if bad:
        raise InputError(f"{folder}: {len(bad)} image(s) named outside "
                         f"<id>[+<id>]__p<index>__<k>.png, e.g. {', '.join(bad[:3])}; rename "
                         "them, move them out or add a manifest.jsonl")
    return [parse_name(name) for name in files]


def _check_entries(folder: Path, raw: list[dict], prompts: dict, prompt_set: str,
                   words: dict[str, str]) -> None:
    """Every entry's prompt index is in the prompt set and its ids are references."""
    for entry in raw:
        index = str(entry.get("prompt_index", 0))
        if not index.isdigit() or int(index) not in prompts:
            raise InputError(f"{folder / entry['file']}: prompt index {index} is not in "
                             f"prompts.set={prompt_set} (0..{len(prompts) - 1})")
        unknown = [str(s) for s in entry["subjects"] if s not in words]
        if unknown:
            known = sorted(words)
            raise InputError(f"{folder / entry['file']}: subject(s) {', '.join(unknown)} not "
                             f"among the {len(known)} references ({', '.join(known[:5])}"
                             f"{', ...' if len(known) > 5 else ''})")


def parse_name(name: str) -> dict:
    """The entry (file, subjects, prompt_index, k) an image file name encodes."""
    match = NAME_PATTERN.match(Path(name).stem)
    if match is None:
        raise InputError(f"image '{name}' does not follow <id>[+<id>]__p<index>__<k>.png "
                         "and the folder has no manifest.jsonl")
    return {"file": name, "subjects": match["ids"].split("+"),
            "prompt_index": int(match["index"]), "k": int(match["k"])}
