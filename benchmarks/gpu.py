"""Every figure only a GPU can give, in one command (issue 25 §3):

    benchmarks/gpu.sh [--tiny] [--out DIR] [--only NAME ...]   (python -m benchmarks.gpu)

runs each GPU benchmark in its own process (``python -m benchmarks.<name>`` from the
repository root), in order, streams its output and ends with a
table of every ``RESULT`` line (and the names that did not print one; the exit code is 1 if
any is missing). Without ``--tiny`` it runs on ``cuda`` with the full-size random folders
``python -m ldm_ext.fullsize`` writes into ``DIR/fullsize`` (no Hub) and is sized for one
80 GB GPU in under 10 minutes; with ``--tiny`` the same steps run on the CPU on tiny
backbones with few repeats, so the script is known to work before a GPU is lent
(``tests/test_gpu_script.py``).

  fullsize    write the SD1.5 and SDXL folders (+ ControlNets, CLIP ViT-H, face encoders)
  attention   attention_overhead.py: our processors vs diffusers' (does the additive mask
              lose the flash kernel?)
  step        step_overhead.py: a Lightning training step vs the bare loop
  memory      step_memory.py: SD1.5's step memory in GiB (ours vs plain), then
              memory_plan.py's plan of an SDXL recipe (printed, not measured) beside it
  scoring     scoring_throughput.py: batched vs one-at-a-time scoring (goal >= 2)
  prepare     prepare_batch.py: the annotator's models on the device, images/s
  zero2       train.py trainer=deepspeed_zero2 on 1 device, 2 steps; the checkpoint's
              content (zero_checkpoint.py)
  sampling    sampling_overhead.py: each method's pipeline vs diffusers' (it/s, ratio)
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SAMPLING = ("instantfamily", "portraitbooth", "sefi_ide", "storymaker")


def steps(tiny: bool, out: Path) -> list[tuple[str, list[str], list[str]]]:
    """(name, command, RESULT names it must print) of every step, in order."""
    device = "cpu" if tiny else "cuda"
    full = out / "fullsize"
    zero_run = out / "zero2"
    sd15 = f"model.pretrained={full}/sd15-fp16"
    zero_cfg = (["--config", "configs/experiment/demo.yaml", "trainer.accelerator=cpu",
                 "method.sample_steps=1",
                 "data.num_demo_samples=8", "data.batch_size=2"] if tiny else
                ["--config", "configs/experiment/instantfamily_sd15.yaml", sd15, "data.kind=demo",
                 f"method.face_weights={full}/face-facenet/facenet.pt", "data.batch_size=2",
                 "data.num_demo_samples=16", "method.sample_steps=2"])
    return [
        ("fullsize", [] if tiny else [
            PY, "-m", "ldm_ext.fullsize", str(full), "--family", "sd15", "--controlnet",
            "--face-encoder", "facenet"], []),
        ("fullsize_sdxl", [] if tiny else [
            PY, "-m", "ldm_ext.fullsize", str(full), "--family", "sdxl", "--controlnet",
            "--image-encoder", "--face-encoder", "iresnet100"], []),
        ("attention", [PY, "-m", "benchmarks.attention_overhead", "--device", device,
                       "--pairs", "2" if tiny else "20"],
         ["attention_masked_multiply_ratio", "attention_masked_hard_ratio",
          "attention_decoupled_ratio"]),
        ("step", [PY, "-m", "benchmarks.step_overhead", "--device", device,
                  *(["--tiny", "--steps", "1", "--rounds", "1"] if tiny else [])],
         ["step_overhead_ratio"]),
        ("memory", [PY, "-m", "benchmarks.step_memory", "--device", device,
                    *(["--width", "32", "--batch", "1"] if tiny else ["--width", "320"])],
         ["step_memory_ratio"]),
        ("memory_plan_sdxl", [PY, "-m", "benchmarks.memory_plan", "--config",
                              "configs/experiment/storymaker_sdxl_paper.yaml"], []),
        ("scoring", [PY, "-m", "benchmarks.scoring_throughput", "--device", device,
                     "--measure", "throughput",
                     *(["--images", "2", "--batch", "2", "--rounds", "1", "--clip",
                        "ViT-B-32"] if tiny else [])],
         ["scoring_throughput_ratio"]),
        ("prepare", [PY, "-m", "benchmarks.prepare_batch", "--device", device,
                     *(["--frames", "2", "--batch-size", "2", "--pairs", "1"] if tiny else [])],
         ["prepare_batch_ratio"]),
        ("zero2", [PY, "-m", "benchmarks.zero_checkpoint", str(zero_run), "--", *zero_cfg,
                   "trainer=deepspeed_zero2", "trainer.devices=1", "trainer.max_steps=2",
                   "logger.wandb=false", "trainer.progress_bar=false"],
         ["zero2_checkpoint_parameters"]),
        ("sampling", [PY, "-m", "benchmarks.sampling_overhead", "--device", device,
                      *(["--tiny", "--pairs", "2", "--steps", "2"] if tiny else
                        ["--fullsize", str(full), "--pairs", "5", "--steps", "10"])],
         [f"sampling_overhead_{m}_ratio" for m in SAMPLING]),
    ]


def run_step(name: str, command: list[str], env: dict) -> tuple[list[str], float, int]:
    """Run one step, echoing its output; (its RESULT lines, seconds, exit code)."""
    print(f"=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    results = []
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith("RESULT "):
            results.append(line.strip())
    code = proc.wait()
    seconds = time.perf_counter() - start
    print(f"=== {name}: exit {code} after {seconds:.0f} s", flush=True)
    return results, seconds, code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny backbones, few repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_out")
    parser.add_argument("--only", nargs="+", help="run only these steps")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results, missing, timings = [], [], []
    for name, command, expected in steps(args.tiny, args.out):
        if not command or (args.only and name not in args.only):
            continue
        lines, seconds, code = run_step(name, command, env)
        results += lines
        timings.append(f"{name} {seconds:.0f}s" + (f" (exit {code})" if code else ""))
        printed = {re.match(r"RESULT (\w+)=", line).group(1) for line in lines}
        missing += [f"{name}: {want}" for want in expected if want not in printed]
    print("=== summary (" + ", ".join(timings) + ")")
    print("\n".join(results))
    for entry in missing:
        print(f"MISSING {entry}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
