"""Bad invocations of the command lines (train.py, eval.py, ``ldm_ext.fit``,
``datamodules.prepare``, ``ldm_ext.generate``, ``ldm_ext.export``) and how to run one as a
user would: a fresh process in a working directory of its own, on a machine that shows no
CUDA GPU and holds no cloud credentials.

Each must end in exit 2 with one stderr line naming the flag or file, leave nothing in its
working directory (no ``runs/``, ``results/``, ``subjects/``, no output folder) and get
there without importing torch (``user_env``): the README's error promise.
``tests/test_errors.py`` asserts that; ``benchmarks/cli_errors.py`` times them (the promise
says within ~3 s).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "configs" / "experiment" / "demo.yaml")
SEFI_TINY = str(ROOT / "configs" / "experiment" / "sefi_ide_tiny.yaml")
EVAL_TINY = str(ROOT / "configs" / "eval" / "tiny.yaml")
COMMANDS = {  # each run from a working directory holding the inputs of ``write_inputs``
    "train": [str(ROOT / "train.py"), "--config", DEMO],
    "eval": [str(ROOT / "eval.py")],
    "fit": ["-m", "ldm_ext.fit", "--config", SEFI_TINY],
    "prepare": ["-m", "datamodules.prepare"],
    "generate": ["-m", "ldm_ext.generate"],
    "export": ["-m", "ldm_ext.export"],
}


class Mistake(NamedTuple):
    """``cli``'s arguments ``args``; ``words``: what its one error line must contain."""

    cli: str
    args: tuple[str, ...]
    words: tuple[str, ...]


MISTAKES = {
    # train.py: devices, DeepSpeed, data stores, config keys, flags
    "train-ddp-without-cuda": Mistake("train", ("trainer=ddp",), ("trainer.devices=8", "CUDA")),
    "train-zero-without-cuda": Mistake("train", ("trainer=deepspeed_zero2",),
                                       ("trainer.strategy=deepspeed", "CUDA")),
    "train-zero-fp16": Mistake("train", ("trainer=deepspeed_zero2", "trainer.accelerator=cpu",
                                         "trainer.precision=16-mixed"), ("16-mixed",)),
    "train-s3-without-credentials": Mistake(
        "train", ("data=laion_face", "data.root=s3://bucket/laion"),
        ("data.root", "s3://bucket/laion", "credentials")),
    "train-root-unprepared": Mistake("train", ("data=laion_face", "data.root=empty"),
                                     ("data.root='empty'", "prepare")),
    "train-bad-key": Mistake("train", ("trainer.nokey=1",), ("trainer.nokey",)),
    "train-bad-flag": Mistake("train", ("--confg", "x.yaml"), ("--confg",)),
    # eval.py: device, checkpoint, folders, flags
    "eval-cuda-without-cuda": Mistake(
        "eval", ("--config", EVAL_TINY, "--checkpoint", "run", "generation.device=cuda"),
        ("generation.device=cuda", "CUDA")),
    "eval-missing-checkpoint": Mistake("eval", ("--config", EVAL_TINY, "--checkpoint", "nothing"),
                                       ("nothing: no such run folder",)),
    "eval-checkpoint-not-a-run": Mistake("eval", ("--config", EVAL_TINY, "--checkpoint", "run"),
                                         ("run is not a run or export folder",)),
    "eval-missing-images": Mistake("eval", ("--images", "nothing", "--references", "refs"),
                                   ("--images nothing",)),
    "eval-out-without-compare": Mistake("eval", ("--images", "imgs", "--out", "x"), ("--out",)),
    # python -m ldm_ext.fit: the photo, the recipe, the trainer
    "fit-truncated-photo": Mistake("fit", ("--photo", "truncated.jpg"),
                                   ("truncated.jpg", "not a readable image")),
    "fit-missing-photo": Mistake("fit", ("--photo", "nothing.jpg"),
                                 ("nothing.jpg", "no such file")),
    "fit-no-photo-flag": Mistake("fit", (), ("--photo",)),
    "fit-not-a-fitting-config": Mistake("fit", ("--photo", "photo.png", "--config", DEMO),
                                        ("single_image",)),
    "fit-ddp-without-cuda": Mistake("fit", ("--photo", "photo.png", "trainer=ddp"), ("CUDA",)),
    # python -m datamodules.prepare: flags, paths, info json, a bucket
    "prepare-output-is-a-file": Mistake(
        "prepare", ("images", "--input", "imgs", "--output", "a_file"), ("--output a_file",)),
    "prepare-zero-samples-per-shard": Mistake(
        "prepare", ("images", "--input", "imgs", "--output", "out", "--samples-per-shard", "0"),
        ("--samples-per-shard",)),
    "prepare-videos-without-meta": Mistake(
        "prepare", ("videos", "--input", "vids", "--output", "out"), ("--meta",)),
    "prepare-missing-input": Mistake(
        "prepare", ("images", "--input", "nothing", "--output", "out"), ("--input nothing",)),
    "prepare-meta-not-json": Mistake(
        "prepare", ("videos", "--input", "vids", "--meta", "a_file", "--output", "out"),
        ("a_file",)),
    "prepare-s3-without-credentials": Mistake(
        "prepare", ("images", "--input", "imgs", "--output", "s3://bucket/out"),
        ("--output s3://bucket/out", "credentials")),
    "prepare-empty-input": Mistake(
        "prepare", ("images", "--input", "empty", "--output", "out"), ("no images", "empty")),
    "prepare-pattern-matches-nothing": Mistake(
        "prepare", ("images", "--input", "imgs/*.tar", "--output", "out"), ("imgs/*.tar",)),
    # python -m ldm_ext.generate / ldm_ext.export: argparse's own mistakes
    "generate-unknown-flag": Mistake("generate", ("--prmpt", "a photo"), ("--prmpt",)),
    "export-no-out-flag": Mistake("export", ("--run", "run"), ("--out", "--help")),
}


def write_inputs(folder: Path) -> None:
    """The files the mistakes name: a photo, a truncated JPEG, a plain file, folders of
    images, of a video, of references, an empty one and a run folder."""
    Image.new("RGB", (64, 64), "gray").save(folder / "photo.png")
    Image.new("RGB", (64, 64), "gray").save(folder / "whole.jpg")
    whole = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "a_file").write_text("not json, not an image\n")
    for sub in ("imgs", "vids", "refs/a", "empty", "run"):
        (folder / sub).mkdir(parents=True)
    Image.new("RGB", (32, 32), "gray").save(folder / "imgs" / "a__p00__0.png")
    Image.new("RGB", (32, 32), "gray").save(folder / "refs" / "a" / "0.png")
    (folder / "refs" / "classes.txt").write_text("a man\n")
    (folder / "vids" / "clip.mp4").write_bytes(b"not a video")


def user_env(home: Path) -> dict[str, str]:
    """This environment as a user's shell without a GPU or cloud credentials would have
    it (CUDA hidden, no AWS keys, endpoint or config files, no instance-metadata lookup),
    and with torch made unimportable (a stand-in package under ``home``): the checks come
    before torch loads, so a check that imports it (seconds: the 3 s promise) fails here
    rather than passing slowly."""
    blocked = home / "torchless" / "torch"
    blocked.mkdir(parents=True, exist_ok=True)
    (blocked / "__init__.py").write_text(
        'raise ModuleNotFoundError("torch imported before the command line checked its '
        'arguments")\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=os.pathsep.join([str(blocked.parent), str(ROOT)]),
               CUDA_VISIBLE_DEVICES="", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(home / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"))
    return env


def run_mistake(mistake: Mistake, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``mistake`` in ``cwd`` as a fresh ``python`` process."""
    return subprocess.run([sys.executable, *COMMANDS[mistake.cli], *mistake.args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
