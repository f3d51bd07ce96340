"""Export a trained run in the layouts its users load: ``python -m ldm_ext.export --run RUN
--out DIR [--official-bin] [--push-to-hub USER/REPO]``.

``DIR`` gets every trainable diffusers model (e.g. InstantFamily's ControlNet) as a
``save_pretrained`` folder named after it (``ControlNetModel.from_pretrained(DIR,
subfolder="controlnet")`` loads it), the other trainable parts by idforge name in
``adapters.safetensors``, the files of other ecosystems the method declares
(``IdentityMethod.export_layouts``: a trained LoRA as ``pytorch_lora_weights.safetensors``
for diffusers' ``load_lora_weights``, StoryMaker's adapter in the official layout), a
sample image, ``export.json`` (which is which), the run's ``config.yaml`` and a model card
``README.md`` (``ldm_ext/model_card.py``). ``ldm_ext.generate`` and ``eval.py`` take the
folder as they take a run. Flags and paths are checked before torch loads.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ldm_ext.cli import ArgumentParser, InputError, run_cli
from ldm_ext.folders import ADAPTERS, EXPORT_INDEX, TRAINABLE, run_folder

STEP_KEY = "global_step"  # metadata of trainable.safetensors (callbacks/checkpointing.py)
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def export(method, run_dir: Path, out: Path, official_bin: bool = False,
           repo: str | None = None) -> Path:
    """Write ``method``'s trained parts, its other-ecosystem layouts, a sample image and
    the model card into ``out`` (``repo``: the Hub repo the card's snippets name)."""
    from ldm_ext.config import to_yaml
    from ldm_ext.model_card import write_sample

    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    modules = write_modules(method, out)
    layouts = [(layout, layout.write(out, official_bin)) for layout in method.export_layouts()]
    step = trained_steps(run_dir)
    files = sorted(name for _, names in layouts for name in names)
    index = {"method": method.cfg.method.name, "modules": modules, "global_step": step,
             "files": files}
    (out / EXPORT_INDEX).write_text(json.dumps(index, indent=2))
    (out / "config.yaml").write_text(to_yaml(method.cfg))
    sample_note = write_sample(method, run_dir, out)
    write_card(method, run_dir, out, modules, layouts, step, repo, sample_note)
    return out


def write_modules(method, out: Path) -> dict[str, str]:
    """Each trainable diffusers model as a ``save_pretrained`` folder, the rest by name in
    ``adapters.safetensors``; returns name -> "diffusers" | "adapters"."""
    from diffusers import ModelMixin

    from ldm_ext.weights import save

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
    return modules


def write_card(method, run_dir: Path, out: Path, modules: dict[str, str], layouts: list,
               step: int | None, repo: str | None, sample_note: str) -> None:
    """The model card ``README.md`` (``ldm_ext/model_card.py``) of the run's config as
    saved, unresolved (the loaded one has its training-only fields cleared)."""
    from ldm_ext.methods.loading import saved_config
    from ldm_ext.model_card import CardInputs, last_evaluation, model_card, portable
    from ldm_ext.pipelines.base import MethodPipeline
    from ldm_ext.registry import method_spec

    pipeline = method_spec(method.cfg.method.name).pipeline_class
    trainable = method.trainable_modules()
    local = repo.split("/")[-1] if repo else portable(str(out))
    inputs = CardInputs(
        modules=modules, layouts=layouts, step=step, ref=repo or local, local=local, repo=repo,
        model_classes={n: type(trainable[n]).__name__ for n, k in modules.items()
                       if k == "diffusers"},
        takes_photos=pipeline.identity is not MethodPipeline.identity,
        idforge_parts=method.idforge_parts(), sample_note=sample_note,
        evaluation={k: portable(v) for k, v in last_evaluation(run_dir).items()})
    (out / "README.md").write_text(model_card(saved_config(run_dir) or method.cfg, inputs))


def check_out(out: Path) -> None:
    """An export never overwrites: an InputError when ``out`` exists and is not empty."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty (an export never overwrites "
                         "files); choose another --out")


def trained_steps(run_dir: Path) -> int | None:
    """Optimizer steps behind ``trainable.safetensors`` (from its metadata), if recorded."""
    from safetensors import safe_open

    path = run_dir / TRAINABLE
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as handle:
        step = (handle.metadata() or {}).get(STEP_KEY)
    return int(step) if step is not None else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m ldm_ext.export",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder (or a weights file in it)")
    parser.add_argument("--out", required=True, help="export folder to write (new or empty)")
    parser.add_argument("--official-bin", action="store_true",
                        help="also write adapters in a released layout as the official "
                             "torch.save .bin dict (StoryMaker's loader reads only that)")
    parser.add_argument("--push-to-hub", metavar="USER/REPO", default=None,
                        help="then upload the folder to this Hugging Face Hub model repo")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> Path:
    """Every flag and path checked without loading torch; returns the run folder."""
    if args.push_to_hub is not None and not REPO_ID.match(args.push_to_hub):
        raise InputError(f"--push-to-hub {args.push_to_hub!r}: expected a Hub repo id "
                         "USER/REPO (letters, digits, '-', '_', '.')")
    run_dir, _ = run_folder(args.run)
    check_out(Path(args.out))
    return run_dir


def main(argv: list[str] | None = None) -> Path:
    """Export the run ``--run`` into ``--out`` (and upload it); return the export folder."""
    args = parse_args(argv)
    run_dir = check_args(args)
    from ldm_ext.methods.loading import load_run

    out = export(load_run(args.run), run_dir, Path(args.out), args.official_bin,
                 args.push_to_hub)
    print(f"exported {run_dir} to {out}")
    if args.push_to_hub:
        from ldm_ext.hub import upload

        print(f"uploaded {out} to {upload(out, args.push_to_hub)}")
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="export"))
