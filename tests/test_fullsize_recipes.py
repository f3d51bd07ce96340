"""Every experiment recipe at full size (``benchmarks/fullsize_recipes.py``): train.py's one
step with the recipe's precision and trainable set on the random full-size folders, the run
reloaded with exactly ``recipe_params.py``'s parameter counts, eval.py's 2-step sample and
scoring. Under ``-m fullsize`` (minutes and GBs each; README "Full size"). The folders are
written once per session per family, or kept across sessions in $IDFORGE_FULLSIZE."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import fullsize_recipes  # noqa: E402
import recipe_params  # noqa: E402

from ldm_ext.methods.loading import run_config  # noqa: E402

pytestmark = pytest.mark.fullsize


@pytest.fixture(scope="session")
def fullsize_cache(tmp_path_factory) -> Path:
    """Where the full-size folders are written (once: ``fullsize.write`` reuses them)."""
    kept = os.environ.get("IDFORGE_FULLSIZE")
    return Path(kept) if kept else tmp_path_factory.mktemp("fullsize")


@pytest.mark.parametrize("recipe", list(fullsize_recipes.RECIPES))
def test_recipe_trains_reloads_samples_and_scores(recipe, fullsize_cache, tmp_path) -> None:
    result = fullsize_recipes.run_recipe(recipe, fullsize_cache, tmp_path)
    run = tmp_path / recipe / recipe
    counts = recipe_params.recipe_counts(run_config(run))  # the config the run trained with
    assert result.trainable == sum(n for n, trains in counts.values() if trains)
    assert result.frozen == sum(n for n, trains in counts.values() if not trains)
    assert result.s_per_step > 0 and all(s.peak_rss_gib > 0 for s in result.stages.values())
    summary = json.loads((tmp_path / recipe / "eval" / "tiny" / "summary.json").read_text())
    assert summary["num_images"] == 1 and "identity" in summary["overall"]
    print(fullsize_recipes.table([result]))
