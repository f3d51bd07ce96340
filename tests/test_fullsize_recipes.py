"""Every experiment recipe at full size (``benchmarks/fullsize_recipes.py``): train.py's one
step with the recipe's precision and trainable set on the random full-size folders, the run
reloaded with exactly ``recipe_params.py``'s parameter counts, eval.py's 2-step sample and
scoring. Under ``-m fullsize`` (minutes and GBs each; README "Full size"). The folders are
written once per session per family, or kept across sessions in $IDFORGE_FULLSIZE; with
$IDFORGE_FULLSIZE_RECORD=FILE each test also records its figures there, as
``fullsize_recipes.py --json FILE`` does."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import psutil
import pytest

from benchmarks import fullsize_recipes, recipe_params
from ldm_ext.methods.loading import run_config

ROOT = Path(__file__).resolve().parent.parent

# above the static bytes: activations at 256², AdamW's temporaries, the runtime, the sample
# grid (instantfamily_sd15 peaked 5.6 GiB above its 9.5)
HEADROOM_GIB = 6


@pytest.fixture(scope="session")
def fullsize_cache(tmp_path_factory) -> Path:
    """Where the full-size folders are written (once: ``fullsize.write`` reuses them)."""
    kept = os.environ.get("IDFORGE_FULLSIZE")
    return Path(kept) if kept else tmp_path_factory.mktemp("fullsize")


@pytest.mark.fullsize
@pytest.mark.parametrize("recipe", list(fullsize_recipes.RECIPES))
def test_recipe_trains_reloads_samples_and_scores(recipe, fullsize_cache, tmp_path) -> None:
    need = fullsize_recipes.static_gib(recipe) + HEADROOM_GIB
    free = (psutil.virtual_memory().available + psutil.swap_memory().free) / fullsize_recipes.GIB
    if need > free:  # e.g. StoryMaker SDXL: 5.4 B bf16 frozen + 0.83 B trained at 16 B each
        pytest.skip(f"{recipe} needs about {need:.0f} GiB of RAM and swap, {free:.0f} GiB "
                    "available")
    result = fullsize_recipes.run_recipe(recipe, fullsize_cache, tmp_path)
    run = tmp_path / recipe / recipe
    counts = recipe_params.recipe_counts(run_config(run))  # the config the run trained with
    assert result.trainable == sum(n for n, trains in counts.values() if trains)
    assert result.frozen == sum(n for n, trains in counts.values() if not trains)
    assert result.s_per_step > 0 and all(s.peak_rss_gib > 0 for s in result.stages.values())
    # the step's forward + backward holds at least the trained parameters' fp32 gradients
    assert result.step_mem_gib * 2**30 >= 4 * result.trainable * 0.9
    summary = json.loads((tmp_path / recipe / "eval" / "tiny" / "summary.json").read_text())
    assert summary["num_images"] == 1 and "identity" in summary["overall"]
    print(fullsize_recipes.table([result]))
    if os.environ.get("IDFORGE_FULLSIZE_RECORD"):
        fullsize_recipes.save([result], Path(os.environ["IDFORGE_FULLSIZE_RECORD"]),
                              f"pytest -m fullsize {Path(__file__).name}")
    shutil.rmtree(run / "checkpoints")  # up to 10 GB (SDXL StoryMaker): pytest keeps 3 runs


def test_fp16_frozen_weights_on_a_cpu_are_refused(monkeypatch) -> None:
    """sefi_ide_sdxl's fp16 SDXL (model/sdxl.yaml) on a CPU: an fp16 conv there ran 160x
    slower than fp32 and the full-size step did not finish; told before anything loads."""
    from ldm_ext import devices
    from ldm_ext.config import ConfigError, load_config
    from ldm_ext.training_checks import check_trainer

    recipe = str(ROOT / "configs/experiment/sefi_ide_sdxl.yaml")  # trainer.accelerator=auto
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    with pytest.raises(ConfigError, match="model.weight_dtype=fp16 on the CPU"):
        check_trainer(load_config(recipe))
    for overrides in (["model.weight_dtype=bf16"], ["trainer.accelerator=cpu",
                                                    "model.weight_dtype=fp32"]):
        check_trainer(load_config(recipe, overrides))
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 1)  # a GPU runs fp16
    check_trainer(load_config(recipe))


def test_a_stage_is_measured_in_its_own_child(tmp_path) -> None:
    """Peak RSS is the child's (256 MiB touched there), swap is polled, a failure raises
    with the log's tail."""
    import sys

    grow = "import numpy; a = numpy.ones(2**28, numpy.uint8); print('held')"
    stage = fullsize_recipes.measured_child([sys.executable, "-c", grow], tmp_path / "a.log")
    assert stage.peak_rss_gib >= 0.25 and stage.peak_swap_gib >= 0 and stage.seconds > 0
    assert (tmp_path / "a.log").read_text() == "held\n"
    assert fullsize_recipes.swapped_bytes(2**22 + 1) == 0  # no such process
    with pytest.raises(RuntimeError, match="exited 3.*\n.*boom"):
        fullsize_recipes.measured_child(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "b.log")
