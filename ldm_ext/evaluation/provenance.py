"""What made a results folder, and the rules that keep results from mixing.

A results folder (``<output_dir>/<name>/``) is bound to what made it, written to
``provenance.json`` before its first image: the checkpoint (path and a hash of the
trainable weights as loaded) or the ``--images`` folder, the method, the eval config
fields that decide the images (``IMAGE_KEYS``, and their hash), the subjects (ids, class
words, photo bytes) and the code version. A rerun resumes only when every one of them
matches; otherwise it stops in one line naming each difference, before anything is
generated, scored or written. Scoring settings are not bound: every score is recomputed
from the images on every run.

``summary.json`` and ``report.md`` carry the same record with the environment (device,
library versions, the seeds of random-init scorers and of the method's random frozen
parts). ``eval.py --compare`` puts side by side only results of one protocol
(``protocol``: the plan of images and the scorers).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from ldm_ext.cli import UserError

PROVENANCE = "provenance.json"
RESULT_FILES = ("manifest.jsonl", "summary.json", "metrics.csv")
# eval config fields that decide which images are made and how (a resume must keep them)
IMAGE_KEYS = ("prompts.set", "prompts.limit", "prompts.marker", "subjects.ids",
              "subjects.num_ids", "subjects.max_groups", "subjects.checkpoints",
              "subjects.fit", "generation.images_per_prompt", "generation.seed",
              "generation.size", "generation.steps", "generation.guidance",
              "generation.sampler")
# the plan of images two compared results must share (sampling steps, guidance and the
# sampler are the method's to choose, and the identity marker is the method's own word)
PLAN_KEYS = ("prompts.set", "prompts.limit", "subjects.ids", "subjects.num_ids",
             "subjects.max_groups", "generation.images_per_prompt", "generation.seed",
             "generation.size")
# scoring fields two compared results may differ in: batch_size and min_rank_corr change no
# score; seed matters only for random scorers (``protocol``); the second identity encoder
# is chosen per method (``auto``: never the method's own family) and the compare report
# names it per run
OTHER_SCORING = ("batch_size", "min_rank_corr", "seed", "second_encoder", "second_detector",
                 "second_weights")
RANDOM_WEIGHTS = ("face_weights", "face_sim_weights", "clip_t_pretrained",
                  "clip_i_pretrained", "second_weights")
LABELS = {"method": "method", "checkpoint": "checkpoint", "weights_hash": "weights sha256",
          "images": "images", "subjects_hash": "subjects sha256",
          "code_version": "code version"}


class ResultsMismatch(UserError, ValueError):
    """A results folder was made by another checkpoint, method, config or code version."""


# ----- the parts of the record ----------------------------------------------------------
def select(config: dict, key: str) -> Any:
    """``config["a"]["b"]`` for key ``a.b`` (None where absent)."""
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def digest(value: Any) -> str:
    """sha256 (hex) of ``value`` as sorted JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def subjects_hash(subjects: dict[str, dict]) -> str:
    """sha256 (hex) of the subjects: each id, its class word and its photo's bytes."""
    h = hashlib.sha256()
    for sid in sorted(subjects):
        h.update(f"{sid}\0{subjects[sid]['class_word']}\0".encode())
        h.update(Path(subjects[sid]["photo"]).read_bytes())
    return h.hexdigest()


def code_version() -> str:
    """``git describe --always --dirty`` of this checkout, else the installed package
    version, else "unknown"."""
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty",
                               "--tags"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return f"git {done.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"idforge {version('idforge')}"
    except PackageNotFoundError:
        return "unknown"


def display_path(path: str | Path | None) -> str | None:
    """``path`` relative to the working directory when under it, else absolute."""
    if path is None:
        return None
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def made_by(eval_config: dict, method: str | None, checkpoint: str | None = None,
            images: str | None = None) -> dict:
    """What makes a results folder, as far as it is known before anything loads: the
    method, the checkpoint or ``--images`` folder (absolute paths), the image-deciding
    config fields and their hash, the code version. ``subjects_hash`` and
    ``weights_hash`` are added once the subjects and the method are loaded."""
    config = {key: select(eval_config, key) for key in IMAGE_KEYS}
    return {"method": method,
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
            "images": str(Path(images).resolve()) if images else None,
            "config": config, "config_hash": digest(config), "code_version": code_version()}


# ----- the binding ----------------------------------------------------------------------
def check_binding(out_dir: Path, made: dict) -> None:
    """Raise ResultsMismatch unless ``out_dir`` is new, holds nothing yet, or was made by
    ``made`` (every field known so far equal)."""
    path = out_dir / PROVENANCE
    if not path.is_file():
        # an --images folder may be its own results folder, with its manifest.jsonl as input
        outputs = RESULT_FILES[1:] if made.get("images") else RESULT_FILES
        held = [f for f in outputs if (out_dir / f).exists()]
        if held:
            shown = display_path(out_dir)
            raise ResultsMismatch(
                f"{shown} holds results ({', '.join(held)}) but no {PROVENANCE}, so what "
                f"made them is unknown: pick another name= (e.g. "
                f"name={free_name(out_dir, made)}) or delete {shown}")
        return
    stored = json.loads(path.read_text())
    differ = differences(stored, made)
    if differ:
        was = ", ".join(f"{k}{v}" for k, v, _ in differ)
        now = ", ".join(f"{k}{v}" for k, _, v in differ)
        shown = display_path(out_dir)
        raise ResultsMismatch(
            f"{shown} was made by {was}; this eval: {now}: pick another name= (e.g. "
            f"name={free_name(out_dir, made)}) or delete {shown}")


def differences(stored: dict, made: dict) -> list[tuple[str, str, str]]:
    """(field label, stored value, new value) of each bound field that differs, config
    fields one by one; only fields ``made`` knows are compared."""
    out = []
    for key, label in LABELS.items():
        if key in made and stored.get(key) != made[key]:
            out.append((f"{label} ", _shown(key, stored.get(key)), _shown(key, made[key])))
    if "config" in made and stored.get("config_hash") != made["config_hash"]:
        old = stored.get("config") or {}
        out += [(f"{key}=", json.dumps(old.get(key)), json.dumps(value))
                for key, value in made["config"].items() if old.get(key) != value]
    return out


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if key in ("checkpoint", "images"):
        return display_path(value)
    return value[:12] if key.endswith("_hash") else str(value)


def free_name(out_dir: Path, made: dict) -> str:
    """An unused folder name beside ``out_dir``: ``<name>_<method>`` (or ``_images``),
    numbered when taken."""
    base = f"{out_dir.name}_{made.get('method') or 'images'}"
    name, k = base, 2
    while (out_dir.parent / name).exists():
        name, k = f"{base}_{k}", k + 1
    return name


def bind(out_dir: Path, made: dict) -> None:
    """Check ``made`` against ``out_dir``'s record, and write the record if it has none."""
    check_binding(out_dir, made)
    path = out_dir / PROVENANCE
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(made, indent=2))
        tmp.replace(path)


# ----- the record in summary.json and report.md -----------------------------------------
def environment(device: str) -> dict:
    """Device (with the GPU's name on CUDA) and the versions of the libraries that make
    and score the images."""
    import platform

    import diffusers
    import open_clip
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {"device": device, "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "open_clip": open_clip.__version__}


def record(made: dict, device: str, scorer_seeds: dict[str, int],
           build_seed: int | None) -> dict:
    """summary.json's ``provenance``: the binding (paths shown relative to the working
    directory when under it), the environment, the seed of each random-init scorer and
    the seed the method's random frozen parts were drawn from (its run's ``seed``)."""
    return {**made, "checkpoint": display_path(made.get("checkpoint")),
            "images": display_path(made.get("images")), **environment(device),
            "scorer_seeds": scorer_seeds, "build_seed": build_seed}


def report_lines(provenance: dict | None) -> list[str]:
    """report.md's closing "Provenance" section (none recorded: no section)."""
    if not provenance:
        return []
    rows = [("method", provenance.get("method")), ("checkpoint", provenance.get("checkpoint")),
            ("weights sha256", provenance.get("weights_hash")),
            ("images", provenance.get("images")),
            ("eval config sha256", provenance.get("config_hash")),
            ("subjects sha256", provenance.get("subjects_hash")),
            ("code version", provenance.get("code_version")),
            ("device", provenance.get("device")),
            ("torch / diffusers / open_clip", " / ".join(
                str(provenance.get(k)) for k in ("torch", "diffusers", "open_clip"))),
            ("random frozen parts drawn from seed", provenance.get("build_seed")),
            ("random-init scorers (seed)", ", ".join(
                f"{k} ({v})" for k, v in (provenance.get("scorer_seeds") or {}).items())
             or "none")]
    return ["## Provenance", "", "| | |", "|---|---|",
            *[f"| {label} | `{value}` |" for label, value in rows if value is not None], ""]


# ----- compare: one protocol ------------------------------------------------------------
def protocol(eval_config: dict, subjects: str | None = None) -> dict[str, Any]:
    """The fields two results must share to be compared: the plan of images
    (``PLAN_KEYS``), the subjects' hash when recorded, and every scoring setting that
    changes a score but the second identity encoder's (with the seed of random-init
    scorers when there are any)."""
    scoring = eval_config.get("scoring") or {}
    fields = {key: select(eval_config, key) for key in PLAN_KEYS}
    fields.update({f"scoring.{k}": v for k, v in scoring.items() if k not in OTHER_SCORING})
    if any(scoring.get(k) == "random" for k in RANDOM_WEIGHTS):
        fields["scoring.seed"] = scoring.get("seed")
    if subjects is not None:
        fields["subjects (sha256)"] = subjects[:12]
    return fields
