"""Generation settings inside the PNG the app offers for download (a ``tEXt`` chunk,
key ``idforge``, JSON), with the ``ldm_ext.generate`` command that makes the image again:
image k of a request is drawn with generator (seed, k), so the command asks for k + 1
images and the image is its last (``<stem>_<k>.png``)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

KEY = "idforge"


def generate_command(settings: dict[str, Any]) -> str:
    """``python -m ldm_ext.generate ...`` for ``settings`` (``image_settings``'s dict);
    the method's inputs go as its flags (photos by the file names they were uploaded as)."""
    args = ["python", "-m", "ldm_ext.generate", "--run", settings["run"],
            "--prompt", settings["prompt"], "--seed", str(settings["seed"]),
            "--num-images", str(settings["image"] + 1), "--steps", str(settings["steps"]),
            "--guidance", str(settings["guidance"]), "--out", "generated.png"]
    if settings["negative_prompt"]:
        args += ["--negative-prompt", settings["negative_prompt"]]
    if settings["size"] is not None:
        args += ["--size", str(settings["size"])]
    for flag, value in settings["inputs"].items():
        if value is True:
            args.append(flag)
        else:
            args += [flag, *(map(str, value) if isinstance(value, list) else [str(value)])]
    return shlex.join(args)


def image_settings(run: str, method: str, prompt: str, negative_prompt: str, seed: int,
                   image: int, steps: int, guidance: float, size: int | None,
                   inputs: dict[str, Any]) -> dict[str, Any]:
    """What made image ``image`` of a request: ``inputs`` are the method's flags with
    their values as text (``--ids``: the photos' file names)."""
    settings = {"run": run, "method": method, "prompt": prompt,
                "negative_prompt": negative_prompt, "seed": seed, "image": image,
                "steps": steps, "guidance": guidance, "size": size, "inputs": inputs}
    return {**settings, "command": generate_command(settings)}


def save_png(image: Image.Image, settings: dict[str, Any], path: Path) -> Path:
    """``image`` as a PNG at ``path`` with ``settings`` in its ``idforge`` text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(KEY, json.dumps(settings))
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings a PNG saved by ``save_png`` carries."""
    with Image.open(path) as image:
        return json.loads(image.text[KEY])
