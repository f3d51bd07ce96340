"""Every experiment recipe at full size on the CPU: one optimizer step, save, reload, two
sampling steps, eval's scoring, each stage a fresh process measured apart.

    python -m benchmarks.fullsize_recipes [RECIPE ...] [--cache DIR] [--out DIR]
        [--resolution 256] [--json benchmarks/fullsize_recipes.json]

Per recipe (``configs/experiment/<recipe>.yaml``), with the random full-size folders of
``ldm_ext/fullsize.py`` (written once under ``--cache``) named by path:

1. ``train.py`` with the recipe's precision, gradient checkpointing and trainable set;
   changed only: the resolution (``--resolution``), batch 1, the demo shards (or one photo
   for ``single_image`` recipes) for data, 2 sampling steps for the grid that ends the run,
   one CPU process (``strategy=auto``: DDP and
   DeepSpeed spread the same step over GPUs), ``max_steps=1``, and weights the Hub cannot
   give offline by path (face and image encoders; IP-Adapter initialisations left out),
   fp16 frozen weights as bf16 (a CPU's 16-bit type: train.py refuses fp16 on a CPU);
2. the run reloaded (``load_run``): trainable and frozen parameters counted;
3. ``eval.py`` on the tiny protocol (random-weight scorers): the checkpoint reloaded again,
   one image generated with 2 sampling steps at the same resolution, then scored.

Each stage's peak RSS is the child's ``ru_maxrss`` (``os.wait4``), and its peak swap the
largest ``VmSwap`` seen while polling it (RAM + swap is what a host without swap needs: the
SDXL StoryMaker recipes ran here only with a swap file); seconds per step and the step's
memory are the run's own ``perf/s_per_step`` and ``perf/step_mem_gib``
(``callbacks/monitors.py``: what the forward and backward added to the bytes ``malloc``
held in use when the batch started, loading and the optimizer left out). The figures are
written to ``--json``, which ``memory_plan.py`` reads for its SDXL rows. CPU kernels keep more
activations than fused CUDA ones, so these peaks are upper bounds for a GPU step.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "benchmarks" / "fullsize_recipes.json"
GIB = 2**30
SWAP_POLL_S = 0.5
# recipe -> (family, the parts fullsize.write adds beside the pipeline folder)
RECIPES: dict[str, tuple[str, dict]] = {
    "instantfamily_sd15": ("sd15", {"face_encoder": "facenet"}),
    "portraitbooth_sd15": ("sd15", {"face_encoder": "facenet"}),
    "sefi_ide_sd15": ("sd15", {}),
    "sefi_ide_sdxl": ("sdxl", {}),
    "storymaker_sd15": ("sd15", {"with_controlnet": True, "with_image_encoder": True,
                                 "face_encoder": "iresnet100"}),
    "storymaker_sdxl_official": ("sdxl", {"with_controlnet": True, "with_image_encoder": True,
                                          "face_encoder": "iresnet100"}),
    "storymaker_sdxl_paper": ("sdxl", {"with_controlnet": True, "with_image_encoder": True,
                                       "face_encoder": "iresnet100"}),
}
# StoryMaker's insightface ONNX and IP-Adapter initialisations have no offline stand-in:
# the torch IResNet-100 ArcFace (the same identity vector) and random PPR / K_i / V_i
STORYMAKER = ["method.face_encoder=arcface", "method.face_arch=r100",
              "method.faceid_weights=null", "method.plus_weights=null"]


@dataclass
class Stage:
    seconds: float
    peak_rss_gib: float
    peak_swap_gib: float = 0.0  # the most of the child's pages the OS had swapped out


@dataclass
class Measured:
    recipe: str
    resolution: int
    trainable: int = 0
    frozen: int = 0
    s_per_step: float = 0.0
    stages: dict[str, Stage] = field(default_factory=dict)
    step_mem_gib: float = 0.0  # the step's forward + backward above the RSS before it


def static_gib(recipe: str) -> float:
    """The recipe's static bytes in one CPU process, GiB: frozen parameters in
    model.weight_dtype, trainable ones fp32 with gradients and AdamW's moments (16 B) -
    what RAM the step needs before any activation (``recipe_params.py``'s exact counts)."""
    from benchmarks import recipe_params
    from ldm_ext.config import load_config

    cfg = load_config(ROOT / "configs" / "experiment" / f"{recipe}.yaml")
    counts = recipe_params.recipe_counts(cfg).values()
    frozen_bytes = {"fp32": 4, "fp16": 2, "bf16": 2}[cfg.model.weight_dtype]
    return (sum(n for n, trains in counts if not trains) * frozen_bytes +
            sum(n for n, trains in counts if trains) * 16) / GIB


def write_folders(recipe: str, cache: Path, log: Path) -> tuple[dict[str, str], Stage]:
    """The recipe's full-size random folders, each written once under ``cache`` by
    ``python -m ldm_ext.fullsize`` in a child (an SDXL write peaks near 10 GB, which this
    process should not keep) -> their config overrides, and the write's figures."""
    from ldm_ext import fullsize

    family, parts = RECIPES[recipe]
    flags = [*(["--controlnet"] if parts.get("with_controlnet") else []),
             *(["--image-encoder"] if parts.get("with_image_encoder") else []),
             *(["--face-encoder", parts["face_encoder"]] if "face_encoder" in parts else [])]
    stage = measured_child([sys.executable, "-m", "ldm_ext.fullsize", str(cache), "--family",
                            family, *flags], log)
    return fullsize.write(cache, family, **parts), stage  # all there now: paths only


def subjects(out: Path) -> Path:
    from ldm_ext.evaluation.subjects import write_demo_subjects

    return write_demo_subjects(out / "subjects")


def train_overrides(recipe: str, paths: dict[str, str], out: Path, photo: Path,
                    resolution: int) -> list[str]:
    """What the full-size run changes in the recipe (see the module docstring)."""
    from ldm_ext.config import load_config

    cfg = load_config(ROOT / "configs" / "experiment" / f"{recipe}.yaml")
    data = ([f"data.image={photo}"] if cfg.data.kind == "single_image" else
            ["data=demo", "data.root=null", "data.num_demo_samples=4"])
    return [f"output_dir={out}", f"data.resolution={resolution}", "data.batch_size=1", *data,
            "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
            "trainer.max_steps=1", "trainer.checkpoint_every=1", "trainer.log_every=1",
            "trainer.progress_bar=false", "logger.wandb=false", "method.sample_steps=2",
            *(STORYMAKER if cfg.method.name == "storymaker" else []),
            # a CPU has no fp16 kernels (train.py refuses fp16 there): its 16-bit type
            *(["model.weight_dtype=bf16"] if cfg.model.weight_dtype == "fp16" else []),
            *(f"{key}={value}" for key, value in paths.items())]


def eval_overrides(run: Path, out: Path, people: Path, resolution: int) -> list[str]:
    """The tiny protocol (random scorers) on one subject, one prompt, one 2-step image."""
    from ldm_ext.methods.loading import run_config

    args = ["--config", "configs/eval/tiny.yaml", "--checkpoint", str(run),
            f"output_dir={out}", f"subjects.root={people}", "subjects.ids=[astronaut]",
            "subjects.num_ids=[1]", "prompts.limit=1", "generation.images_per_prompt=1",
            f"generation.size={resolution}", "generation.steps=2"]
    if run_config(run).method.name == "sefi_ide":  # a per-identity method: its own fit
        weights = run / "trainable.safetensors"
        args += [f"subjects.checkpoints={{astronaut: '{weights}'}}", "prompts.marker=V*"]
    return args


def measured_child(cmd: list[str], log: Path) -> Stage:
    """Run ``cmd`` from the repository root; its wall seconds, peak RSS (its own
    ``ru_maxrss``, KiB on Linux) and peak swap. A failure raises with the log's tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start, swapped = time.perf_counter(), 0
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            swapped = max(swapped, swapped_bytes(proc.pid))
            time.sleep(SWAP_POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd[:3])} exited {proc.returncode} ({log}):\n{tail}")
    return Stage(time.perf_counter() - start, usage.ru_maxrss * 1024 / GIB, swapped / GIB)


def swapped_bytes(pid: int) -> int:
    """Bytes of process ``pid`` swapped out now (``VmSwap`` in /proc; 0 where there is none)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines()
                 if line.startswith("VmSwap:")), 0)


def logged(run: Path, key: str) -> float:
    """The run's last logged value of ``key`` (e.g. ``perf/s_per_step``)."""
    [metrics] = sorted((run / "csv").glob("version_*/metrics.csv"))[-1:]
    values = [row[key] for row in csv.DictReader(metrics.open()) if row.get(key)]
    return float(values[-1])


def count_parameters(run: Path) -> dict[str, int]:
    """The reloaded run's parameters: trainable (those of ``trainable_parameters`` that
    the optimizer gets: ``requires_grad``) and frozen (every other parameter of the method,
    each shared one once)."""
    from ldm_ext.methods.loading import load_run

    method = load_run(run)
    trains = {id(p) for p in method.trainable_parameters().values() if p.requires_grad}
    unique = {id(p): p.numel() for p in method.parameters()}
    trainable = sum(n for key, n in unique.items() if key in trains)
    return {"trainable": trainable, "frozen": sum(unique.values()) - trainable}


def run_recipe(recipe: str, cache: Path, out: Path, resolution: int = 256) -> Measured:
    """The three stages of ``recipe`` into ``out/<recipe>``; what they measured."""
    work = out / recipe
    work.mkdir(parents=True, exist_ok=True)
    result = Measured(recipe, resolution)
    paths, result.stages["write"] = write_folders(recipe, cache, work / "write.log")
    people = subjects(out)
    train = [sys.executable, "train.py", "--config", f"configs/experiment/{recipe}.yaml",
             *train_overrides(recipe, paths, work, people / "astronaut" / "0.png", resolution)]
    result.stages["train"] = measured_child(train, work / "train.log")
    run = work / recipe
    result.s_per_step = logged(run, "perf/s_per_step")
    result.step_mem_gib = logged(run, "perf/step_mem_gib")
    counts = work / "counts.json"
    reload = [sys.executable, "-m", "benchmarks.fullsize_recipes", "--count", str(run), str(counts)]
    result.stages["reload"] = measured_child(reload, work / "reload.log")
    result.__dict__.update(json.loads(counts.read_text()))
    score = [sys.executable, "eval.py", *eval_overrides(run, work / "eval", people, resolution)]
    result.stages["sample + score"] = measured_child(score, work / "eval.log")
    return result


def table(results: list[Measured]) -> str:
    """A markdown table of what ``results`` measured (wall: every stage, the folder write
    included, which is ~0 s once the folders exist; a stage's swap beside its RSS)."""
    lines = ["| recipe | trainable | frozen | s/step | step memory (GiB) | peak RSS train / "
             "reload / sample+score (GiB) | wall train / reload / sample+score (s) | wall, all "
             "stages |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        stages = [r.stages[name] for name in ("train", "reload", "sample + score")]
        rss = " / ".join(f"{s.peak_rss_gib:.1f}" + (f" +{s.peak_swap_gib:.1f} swap" if
                                                     s.peak_swap_gib >= 0.05 else "")
                         for s in stages)
        wall = " / ".join(f"{s.seconds:.0f}" for s in stages)
        total = sum(s.seconds for s in r.stages.values())
        lines.append(f"| {r.recipe} ({r.resolution}²) | {r.trainable / 1e6:.1f} M | "
                     f"{r.frozen / 1e6:.1f} M | {r.s_per_step:.1f} | "
                     f"{f'{r.step_mem_gib:.2f}' if r.step_mem_gib else '-'} | {rss} | {wall} | "
                     f"{total / 60:.1f} min |")
    return "\n".join(lines)


def load(path: Path) -> list[Measured]:
    """The figures saved in ``path``, in ``RECIPES`` order."""
    data = json.loads(path.read_text())
    return [Measured(name, data[name]["resolution"], data[name]["trainable"],
                     data[name]["frozen"], data[name]["s_per_step"],
                     {k: Stage(**v) for k, v in data[name]["stages"].items()},
                     data[name].get("step_mem_gib", 0.0))
            for name in RECIPES if name in data]


def save(results: list[Measured], path: Path, command: str) -> None:
    """Merge ``results`` into the JSON file ``path`` (recipe -> figures)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    for r in results:
        data[r.recipe] = {**asdict(r), "date": stamp, "command": command}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", default=list(RECIPES),
                        help=f"default: all of {', '.join(RECIPES)}")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "idforge-fullsize",
                        help="where the full-size folders are written once")
    parser.add_argument("--out", type=Path, default=Path("runs/fullsize"))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--json", type=Path, default=MEASURED)
    parser.add_argument("--show", action="store_true", help="print --json's table, run nothing")
    parser.add_argument("--count", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.recipes) - set(RECIPES)
    if unknown:
        parser.error(f"no such recipe: {', '.join(sorted(unknown))}")
    if args.count:
        args.count[1].write_text(json.dumps(count_parameters(args.count[0])))
        return
    if args.show:
        print(table(load(args.json)))
        return
    results = []
    for recipe in args.recipes:
        results.append(run_recipe(recipe, args.cache, args.out.resolve(), args.resolution))
        print(table(results[-1:]), flush=True)
        save(results[-1:], args.json,
             " ".join(["python -m benchmarks.fullsize_recipes", *sys.argv[1:]]))
    print(table(results))


if __name__ == "__main__":
    main()
