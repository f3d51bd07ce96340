"""The model card (``README.md``) of an export: the Hub's YAML front matter, a sample image,
load snippets (idforge's Python API and CLI, then what other ecosystems load), the training
data, steps and last evaluation, and the run's config.

The card is published with the weights, so it carries no path of the machine that trained:
every absolute path in the config (``output_dir``, data roots, an identity photo, local
weights) is shown by its file name, and the config is written without resolving
interpolations (``${oc.env:...}`` stays as written).
"""
from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ldm_ext.config_layers import written_container

SAMPLE = "sample.png"
# the licence an export inherits from its base model, by hub id (lower case); else "other"
LICENSES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "compvis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
}
FAMILY_TAGS = {"sd15": "stable-diffusion", "sdxl": "stable-diffusion-xl"}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
ABSOLUTE = re.compile(r"^(/|~|\\\\|[A-Za-z]:[\\/])")  # POSIX, home, UNC, drive letter


@dataclass
class CardInputs:
    """What the card shows besides the config: the folder's parts and how to reach it.

    ``modules``: trainable part -> "diffusers" (a ``save_pretrained`` folder) or
    "adapters"; ``model_classes``: diffusers class name of each such folder; ``layouts``:
    (other-ecosystem layout, the files it wrote); ``ref``: the Hub repo id when pushed,
    else the folder as the user named it; ``local``: the folder on disk."""

    modules: dict[str, str]
    model_classes: dict[str, str]
    layouts: list[tuple[Any, list[str]]]
    step: int | None
    ref: str
    local: str
    repo: str | None = None
    takes_photos: bool = True
    idforge_parts: str = ""
    sample_note: str = ""
    evaluation: dict[str, str] = field(default_factory=dict)


def portable(value: Any) -> Any:
    """``value`` without the training machine's paths: an absolute path becomes its file
    name; anything else is returned unchanged."""
    if isinstance(value, str) and ABSOLUTE.match(value):
        return Path(value.rstrip("/\\")).name or "."
    return value


def portable_config(cfg) -> dict:
    """The config as plain data, interpolations unresolved, every string ``portable``."""
    def walk(node):
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return portable(node)
    return walk(written_container(cfg))


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub repo id (``owner/name``) and is no local folder."""
    return bool(name) and bool(HUB_ID.match(name)) and not Path(name).exists()


def license_of(base: str | None) -> str:
    """The licence of a known base model (``LICENSES``), else "other"."""
    return LICENSES.get((base or "").lower(), "other")


def front_matter(config: dict, layouts: list[tuple[Any, list[str]]]) -> str:
    """The Hub's YAML metadata block (``huggingface_hub.ModelCardData``)."""
    from huggingface_hub import ModelCardData

    base, family = config["model"]["pretrained"], config["model"]["family"]
    files = [name for _, names in layouts for name in names]
    tags = ["idforge", config["method"]["name"], "text-to-image", FAMILY_TAGS.get(family, family)]
    tags += ["lora"] if any(name.startswith("pytorch_lora_weights") for name in files) else []
    data = ModelCardData(library_name="diffusers", pipeline_tag="text-to-image",
                         license=license_of(base), tags=tags,
                         base_model=base if is_hub_id(base) else None)
    return f"---\n{data.to_yaml()}\n---\n"


def last_evaluation(run_dir: Path) -> dict[str, str]:
    """The last row of ``<run>/eval/eval.csv`` (training-time evaluation), or {}."""
    path = run_dir / "eval" / "eval.csv"
    if not path.is_file():
        return {}
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {k: v for k, v in rows[-1].items() if v} if rows else {}


def write_sample(method, run_dir: Path, out: Path) -> str:
    """``out/sample.png``: the run's last sample grid, else a fresh grid of the sample
    prompts from the method's pipeline (seeded by the run's seed). Returns its caption."""
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    if grids:
        shutil.copyfile(grids[-1], out / SAMPLE)
        return f"The last sample grid of training (`{grids[-1].name}`)."
    from ldm_ext.pipelines.sampling import image_grid

    hp, size = method.cfg.method, (method.cfg.data.resolution,) * 2
    pipe, generator = method.pipeline(), torch.Generator().manual_seed(method.cfg.seed)
    images = [pipe(prompt, None, size=size, steps=hp.sample_steps, guidance=hp.guidance_scale,
                   generator=generator, progress=False) for prompt in hp.sample_prompts]
    image_grid(images, 1).save(out / SAMPLE)
    return "Sampled at export time from the sample prompts, without identities."


def base_model_code(config: dict) -> str:
    """Python defining ``base``: the base model's hub id, the tiny backbone, or a local
    folder by name."""
    base, family = config["model"]["pretrained"], config["model"]["family"]
    if base == "tiny":
        return ("from ldm_ext.tiny import tiny_backbone_dir\n\n"
                f'base = str(tiny_backbone_dir("{family}"))  # the tiny demo backbone')
    note = "" if is_hub_id(base) else "  # the local base model folder it was trained on"
    return f'base = "{base}"{note}'


def idforge_usage(config: dict, inputs: CardInputs) -> str:
    """The Python API and CLI snippets."""
    prompt = (config["method"].get("sample_prompts") or ["a photo of a person"])[0]
    photos = ', photos=["face.jpg"]' if inputs.takes_photos else ""
    ids = " --ids face.jpg" if inputs.takes_photos else ""
    fetch = (f"hf download {inputs.repo} --local-dir {inputs.local}\n" if inputs.repo else "")
    return f"""```python
from ldm_ext import load_pipeline

pipe = load_pipeline("{inputs.local}")
image = pipe("{prompt}"{photos}).images[0]
```

```bash
{fetch}python -m ldm_ext.generate --run {inputs.local}{ids} --prompt "{prompt}" --out image.png
```
"""


def diffusers_usage(config: dict, inputs: CardInputs) -> str:
    """What other ecosystems load: each diffusers model folder, then each layout's file."""
    parts = [f"```python\n{base_model_code(config)}\n```\n"]
    for name, kind in inputs.modules.items():
        if kind == "diffusers":
            cls, ref = inputs.model_classes[name], inputs.ref
            parts.append(f"`{name}/` ({cls}):\n\n```python\nfrom diffusers import {cls}\n\n"
                         f'{name} = {cls}.from_pretrained("{ref}", subfolder="{name}")\n```\n')
    parts += [layout.card(inputs.ref, inputs.local, files) for layout, files in inputs.layouts]
    return "\n".join(parts)


def data_line(config: dict) -> str:
    """The training data in one line: kind, source (portable), resolution, batch."""
    data = config["data"]
    source = data.get("root") or data.get("shards") or data.get("image") or ""
    return (f"`{data['kind']}` {f'`{source}`' if source else ''}, {data['resolution']} px, "
            f"batch {data['batch_size']}")


def file_list(inputs: CardInputs) -> str:
    """One Markdown bullet per file or folder of the export."""
    lines = [f"- `{name}/`: diffusers `save_pretrained` folder" if kind == "diffusers"
             else f"- `{name}`: in `adapters.safetensors` (idforge names)"
             for name, kind in inputs.modules.items()]
    lines += [f"- `{name}`" for _, files in inputs.layouts for name in files]
    lines += ["- `export.json`, `config.yaml`: what is where, the run's config (idforge)"]
    return "\n".join(lines)


def evaluation_table(metrics: dict[str, str]) -> str:
    """The last training-time evaluation as a Markdown table."""
    if not metrics:
        return "No evaluation ran during training."
    rows = "\n".join(f"| {k} | {v} |" for k, v in metrics.items())
    return f"| metric | value |\n|---|---|\n{rows}"


def model_card(cfg, inputs: CardInputs) -> str:
    """The export's README.md (no absolute path of the training machine)."""
    config = portable_config(cfg)
    model, method, trainer = config["model"], config["method"], config["trainer"]
    steps = inputs.step if inputs.step is not None else "unknown"
    controlnet = model.get("controlnet") or "none"
    body = f"""# {config['name']}: {method['name']} (idforge)

![sample]({SAMPLE})

{inputs.sample_note}

- method: `{method['name']}`, trained with idforge
- base model: `{model['pretrained']}` ({model['family']}), ControlNet: `{controlnet}`
- licence: `{license_of(model['pretrained'])}`, the base model's
- trained steps: {steps} (of trainer.max_steps={trainer['max_steps']})

## Use it with idforge

{idforge_usage(config, inputs)}
## Use it elsewhere (diffusers, the official code)

{diffusers_usage(config, inputs)}
{inputs.idforge_parts}

## Files

{file_list(inputs)}

## Training data

{data_line(config)}; {steps} optimizer steps.

## Evaluation (last training-time evaluation)

{evaluation_table(inputs.evaluation)}

## Config

```yaml
{OmegaConf.to_yaml(OmegaConf.create(config))}```
"""
    return front_matter(config, inputs.layouts) + "\n" + body
