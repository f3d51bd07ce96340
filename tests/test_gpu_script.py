"""benchmarks/gpu.sh --tiny: every GPU benchmark runs end to end on the CPU on tiny
backbones and prints each RESULT line the GPU run is for."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_script_tiny_prints_every_result(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny",
                             "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.split("=== summary")[-1]
    for _, _, expected in gpu.steps(True, tmp_path):
        for name in expected:
            assert f"RESULT {name}=" in summary, name
    assert "MISSING" not in summary


def test_every_gpu_step_runs_on_cuda_from_the_fullsize_folders(tmp_path):
    steps = {name: command for name, command, _ in gpu.steps(False, tmp_path)}
    assert all(command for command in steps.values())  # nothing skipped at full size
    devices = [c[c.index("--device") + 1] for c in steps.values() if "--device" in c]
    assert devices and set(devices) == {"cuda"}
    assert str(tmp_path / "fullsize") in " ".join(steps["sampling"] + steps["zero2"])
