"""A short DeepSpeed ZeRO run of ``train.py`` and what its checkpoint holds.

    python -m benchmarks.zero_checkpoint OUT -- trainer=deepspeed_zero2 trainer.max_steps=2 ...

Runs ``train.py <overrides> output_dir=OUT name=<fresh>`` and reads the last checkpoint
folder: its files and sizes, the module state (``ldm_ext.weights.read_state``: tensors,
parameters, dtypes) and whether it holds exactly the tensors of the run's
``trainable.safetensors`` (trainable weights only, no frozen part). Ends with
``RESULT zero2_checkpoint_parameters=<n> tensors=<k> matches_export=<bool> run_s=<s>``.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.timing import Stopwatch

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import load_file

    from ldm_ext.weights import read_state

    argv = list(sys.argv[1:] if argv is None else argv)
    out, overrides = Path(argv[0]), [a for a in argv[1:] if a != "--"]
    name = f"zero-{time.strftime('%Y%m%d-%H%M%S')}"
    clock = Stopwatch("cpu")
    clock.start()
    subprocess.run([sys.executable, "train.py", *overrides, f"output_dir={out}",
                    f"name={name}"], cwd=ROOT, check=True)
    seconds = clock.elapsed()
    run = out / name
    folder = run / "checkpoints" / "last.ckpt"  # a folder under DeepSpeed
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(folder)}  {path.stat().st_size / 2**20:.1f} MiB")
    state = read_state(folder)
    export = load_file(run / "trainable.safetensors")
    params = sum(t.numel() for t in state.values())
    dtypes = sorted({str(t.dtype) for t in state.values()})
    matches = state.keys() == export.keys() and all(
        state[k].shape == export[k].shape for k in export)
    print(f"{folder.name}: {len(state)} tensors, {params} parameters, {dtypes}; "
          f"train.py took {seconds:.0f} s (start-up, 2 steps, sampling, saving)")
    print(f"RESULT zero2_checkpoint_parameters={params} tensors={len(state)} "
          f"matches_export={matches} run_s={seconds:.0f}")
    return 0 if matches else 1


if __name__ == "__main__":
    raise SystemExit(main())
