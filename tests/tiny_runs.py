"""Tiny trained runs that several test files share: conftest.py makes each a session-scoped
fixture (beside its own ``tiny_run`` and ``portraitbooth_run``), so it trains once per
test session whichever files use it (the method's end-to-end file, the API == CLI check
of test_generate.py)."""
from __future__ import annotations

from pathlib import Path

SEFI_TINY = "configs/experiment/sefi_ide_tiny.yaml"
SEFI_FAST = ["trainer.progress_bar=false", "trainer.checkpoint_every=2", "method.sample_steps=2"]


def train_storymaker(out: Path) -> Path:
    """2 steps of the StoryMaker demo at 64 px, evaluated at step 2."""
    from ldm_ext import training

    assert training.main(["--config", "configs/experiment/storymaker_demo.yaml",
                          f"output_dir={out}", "trainer.max_steps=2",
                          "trainer.checkpoint_every=2", "trainer.log_every=1",
                          "trainer.eval_every=2", "trainer.progress_bar=false",
                          "logger.wandb=false", "data.num_demo_samples=8", "data.resolution=64",
                          "method.sample_steps=2"]) == 0
    return out / "storymaker_demo"


def fit_sefi_ide(out: Path) -> dict[str, Path]:
    """Two identities fitted for 2 steps; alice is then resumed to 3."""
    import skimage.data
    from PIL import Image

    from ldm_ext import fit

    photos = {"alice": skimage.data.astronaut()[0:300, 80:380], "bob": skimage.data.chelsea()}
    for name, array in photos.items():
        Image.fromarray(array).save(out / f"{name}.png")
        assert fit.main(["--config", SEFI_TINY, "--photo", str(out / f"{name}.png"),
                         "--name", name, f"output_dir={out}", "trainer.max_steps=2",
                         *SEFI_FAST]) == 0
    assert fit.main(["--config", SEFI_TINY, "--photo", str(out / "alice.png"), "--name", "alice",
                     f"output_dir={out}", "trainer.max_steps=3", *SEFI_FAST]) == 0
    return {name: out / name for name in photos}
