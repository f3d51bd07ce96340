"""Export a trained run in the layout its ecosystem loads: ``python -m ldm_ext.export
--run RUN --out DIR``.

``DIR`` gets every trainable diffusers model (e.g. InstantFamily's ControlNet) as a
``save_pretrained`` folder named after it (``ControlNetModel.from_pretrained(DIR/controlnet)``
loads it), the other trainable parts in ``adapters.safetensors`` by name, ``export.json``
(which is which), the run's ``config.yaml`` and a model card ``README.md`` (method, base
model, config, steps, data, the last evaluation when one ran). ``ldm_ext.generate`` and
``eval.py`` take the folder as they take a run.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from diffusers import ModelMixin
from safetensors import safe_open

from ldm_ext.cli import InputError, run_cli
from ldm_ext.config import to_yaml
from ldm_ext.weights import ADAPTERS, EXPORT_INDEX, save

STEP_KEY = "global_step"  # metadata of trainable.safetensors (callbacks/checkpointing.py)


def export(method, run_dir: Path, out: Path) -> Path:
    """Write ``method``'s trainable parts and its model card into ``out``."""
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    modules, adapters = {}, {}
    state = method.trainable_state_dict()
    for name, module in method.trainable_modules().items():
        if isinstance(module, ModelMixin) and "." not in name:
            module.save_pretrained(out / name, safe_serialization=True)
            modules[name] = "diffusers"
        else:
            adapters.update({k: v for k, v in state.items() if k.startswith(f"{name}.")})
            modules[name] = "adapters"
    if adapters:
        save(adapters, out / ADAPTERS)
    step = trained_steps(run_dir)
    index = {"method": method.cfg.method.name, "modules": modules, "global_step": step}
    (out / EXPORT_INDEX).write_text(json.dumps(index, indent=2))
    (out / "config.yaml").write_text(to_yaml(method.cfg))
    (out / "README.md").write_text(model_card(method.cfg, modules, step, run_dir))
    return out


def check_out(out: Path) -> None:
    """An export never overwrites another: an InputError when ``out`` holds one."""
    if (out / EXPORT_INDEX).exists():
        raise InputError(f"{out} already holds an export; choose another --out")


def trained_steps(run_dir: Path) -> int | None:
    """Optimizer steps behind ``trainable.safetensors`` (from its metadata), if recorded."""
    path = run_dir / "trainable.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as handle:
        step = (handle.metadata() or {}).get(STEP_KEY)
    return int(step) if step is not None else None


def last_evaluation(run_dir: Path) -> dict[str, str]:
    """The last row of ``<run>/eval/eval.csv`` (training-time evaluation), or {}."""
    path = run_dir / "eval" / "eval.csv"
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    return {k: v for k, v in rows[-1].items() if v} if rows else {}


def model_card(cfg, modules: dict[str, str], step: int | None, run_dir: Path) -> str:
    """The export's README.md."""
    files = "\n".join(f"- `{name}`: " + ("diffusers `save_pretrained` folder"
                                         if kind == "diffusers" else f"in `{ADAPTERS}`")
                      for name, kind in modules.items())
    metrics = last_evaluation(run_dir)
    evaluation = ("\n".join(f"| {k} | {v} |" for k, v in metrics.items())
                  if metrics else "no evaluation ran during training")
    return f"""# {cfg.name}: {cfg.method.name}

- method: `{cfg.method.name}` (idforge)
- base model: `{cfg.model.pretrained}` ({cfg.model.family}), ControlNet: `{cfg.model.controlnet}`
- trained steps: {step if step is not None else "unknown"} (of trainer.max_steps={cfg.trainer.max_steps})
- data: `{cfg.data.kind}` {cfg.data.root or cfg.data.shards or cfg.data.image or ""}, \
{cfg.data.resolution}px, batch {cfg.data.batch_size}

## Files
{files}

Load: `python -m ldm_ext.generate --run <this folder> ...` or
`python eval.py --checkpoint <this folder> ...`.

## Evaluation (last training-time evaluation)
{"| metric | value |" + chr(10) + "|---|---|" + chr(10) if metrics else ""}{evaluation}

## Config
```yaml
{to_yaml(cfg)}```
"""


def main(argv: list[str] | None = None) -> Path:
    """Export the run ``--run`` into ``--out``; return the export folder."""
    from ldm_ext.methods.loading import load_run, run_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder (or a weights file in it)")
    parser.add_argument("--out", required=True, help="export folder to write")
    args = parser.parse_args(argv)
    run_dir, _ = run_folder(args.run)
    check_out(Path(args.out))  # before the weights load
    out = export(load_run(args.run), run_dir, Path(args.out))
    print(f"exported {run_dir} to {out}")
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="export"))
