"""The contract every registered method passes (diffusers' ``PipelineTesterMixin`` is the
model): on its tiny recipe, one training step trains exactly its trainable parameters, a
seed fixes the step and the image, trainable weights save and load by name, its pipeline
draws an image, an export loads back into the same weights and images, and SDXL steps and
samples too.

``MethodContract`` is a mixin: a test class gives the ``method_name`` fixture (and, for a
method whose tiny recipe is not in ``configs/experiment/``, the ``recipe`` fixture). Every
check goes through the method's registry entry and the shared hooks only (``from_config``,
``model_step``, ``trainable_modules``, ``batch_identities``, ``pipeline``), so a new method
gets all of it by registering.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from ldm_ext.config import ConfigError, load_config
from ldm_ext.registry import data_kind, method_spec

ROOT = Path(__file__).resolve().parent.parent
SIDE = 64  # training and sampling side: 8x8 latents on the tiny backbone
FAST = [f"data.resolution={SIDE}", "data.batch_size=1", "data.num_workers=0",
        "data.num_demo_samples=8", "method.warmup_steps=0", "method.empty_prompt_prob=0",
        "method.sample_steps=2", "method.sample_num_ids=[1]", "seed=0"]


def tiny_recipe(name: str) -> Path:
    """The experiment in configs/experiment/ that trains method ``name`` on the tiny
    random backbone (``model.pretrained: tiny``)."""
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        cfg = load_config(path)
        if cfg.method.name == name and cfg.model.pretrained == "tiny":
            return path
    raise LookupError(f"no tiny recipe of method {name!r} in configs/experiment/")


@dataclass
class Built:
    """A method built from its tiny config, with one batch of its training data."""

    cfg: object
    method: object
    batch: dict
    before: dict | None = None  # name -> parameter before the optimizer step (``stepped``)


def source_overrides(cfg, folder: Path) -> list[str]:
    """A photo for a data kind that reads one file (``single_image``); nothing otherwise."""
    kind = data_kind(cfg.data.kind)
    if kind.names != "file":
        return []
    import skimage.data

    photo = folder / "photo.png"
    Image.fromarray(skimage.data.astronaut()[0:300, 80:380]).save(photo)
    return [f"data.{kind.source}={photo}"]


def build(recipe: Path, folder: Path, *overrides: str) -> Built:
    """The method and one float batch of its DataModule, as ``train.py`` builds them."""
    from datamodules.factory import build_datamodule
    from ldm_ext.methods.loading import build_method

    cfg = load_config(recipe, [*FAST, *overrides])
    cfg = load_config(recipe, [*FAST, *overrides, *source_overrides(cfg, folder)])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    return Built(cfg, build_method(cfg), datamodule.on_after_batch_transfer(batch, 0))


def step_loss(method, batch: dict, seed: int = 0) -> torch.Tensor:
    return method.model_step(batch, torch.Generator().manual_seed(seed))["loss"]


def image(method, batch: dict, seed: int = 0) -> Image.Image:
    """One image of the first identity of ``batch`` (none when the method draws its
    identities from fitted weights), through the method's own pipeline."""
    identities = method.batch_identities(batch)
    method.eval()
    pipe = method.pipeline()
    return pipe("a photo of a person", None if identities is None else identities[:1],
                size=(SIDE, SIDE), steps=2, guidance=3.0,
                generator=torch.Generator().manual_seed(seed), progress=False)


def trainable(method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.trainable_parameters().items()}


class MethodContract:
    """The checks; the class that mixes it in gives ``method_name``."""

    @pytest.fixture(scope="class")
    def recipe(self, method_name: str) -> Path:
        return tiny_recipe(method_name)

    @pytest.fixture(scope="class")
    def built(self, method_name: str, recipe: Path, tmp_path_factory) -> Built:
        built = build(recipe, tmp_path_factory.mktemp("contract"))
        assert built.cfg.method.name == method_name
        return built

    @pytest.fixture(scope="class")
    def stepped(self, built: Built) -> Built:
        """``built`` after one optimizer step (its parameters before are kept aside)."""
        method = built.method.train()
        built.before = {k: v.detach().clone() for k, v in method.named_parameters()}
        optimizer = method.configure_optimizers()["optimizer"]
        step_loss(method, built.batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        return built

    def test_a_seed_fixes_the_training_loss(self, built: Built):
        method = built.method.train()
        with torch.no_grad():
            first, again = (step_loss(method, built.batch) for _ in range(2))
            other = step_loss(method, built.batch, seed=1)
        assert torch.isfinite(first) and first.item() == again.item() != other.item()

    def test_one_step_trains_exactly_the_trainable_parameters(self, stepped: Built):
        method = stepped.method
        names = {n for n, p in method.named_parameters() if p.requires_grad}
        trainable_ids = {id(p) for p in method.trainable_parameters().values()}
        assert names and all(id(p) in trainable_ids for n, p in method.named_parameters()
                             if n in names)
        optimizer = method.configure_optimizers()["optimizer"]
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
            {id(p) for n, p in method.named_parameters() if n in names}
        changed = {n for n, p in method.named_parameters()
                   if not torch.equal(p.detach(), stepped.before[n])}
        assert changed and changed <= names

    def test_trainable_weights_save_and_load_by_name(self, stepped: Built, tmp_path):
        """Written by name, read back by name (a fresh module reads them in the export
        check below)."""
        method, path = stepped.method, tmp_path / "trainable.safetensors"
        saved = trainable(method)
        method.save_trainable(path)
        with torch.no_grad():
            for param in method.trainable_parameters().values():
                param.zero_()
        method.load_trainable(path)
        for name, value in saved.items():
            assert torch.equal(method.trainable_parameters()[name].detach(), value), name

    def test_pipeline_draws_a_seeded_image(self, built: Built):
        first = image(built.method, built.batch)
        assert isinstance(first, Image.Image) and first.size == (SIDE, SIDE)
        assert first.tobytes() == image(built.method, built.batch).tobytes()
        assert first.tobytes() != image(built.method, built.batch, seed=1).tobytes()

    def test_pipeline_draws_a_prompt_only_image(self, built: Built):
        """No identities at all (the model card's grid of an export without samples)."""
        built.method.eval()
        drawn = built.method.pipeline()("a photo of a person", None, size=(SIDE, SIDE),
                                        steps=2, guidance=3.0, progress=False,
                                        generator=torch.Generator().manual_seed(0))
        assert isinstance(drawn, Image.Image) and drawn.size == (SIDE, SIDE)

    def test_export_loads_back_the_weights_and_images(self, stepped: Built, tmp_path):
        from ldm_ext.config import to_yaml
        from ldm_ext.export import export
        from ldm_ext.methods.loading import load_run

        run = tmp_path / "run"  # what a finished run holds: config, weights, a grid
        (run / "samples").mkdir(parents=True)
        (run / "config.yaml").write_text(to_yaml(stepped.cfg))
        stepped.method.save_trainable(run / "trainable.safetensors")
        image(stepped.method, stepped.batch).save(run / "samples" / "step_0000001.png")
        loaded = load_run(export(stepped.method.eval(), run, tmp_path / "export"))
        for name, value in trainable(stepped.method).items():
            assert torch.equal(loaded.trainable_parameters()[name].detach(), value), name
        assert image(loaded, stepped.batch).tobytes() == \
            image(stepped.method, stepped.batch).tobytes()

    def test_sdxl_steps_and_samples(self, method_name: str, recipe: Path, built: Built,
                                    tmp_path):
        """Where the method's config lists SDXL (``MethodConfig.FAMILIES``); elsewhere an
        SDXL config is refused before anything loads."""
        if "sdxl" not in method_spec(method_name).config_class.FAMILIES:
            with pytest.raises(ConfigError, match="model.family='sdxl' is not one of"):
                load_config(recipe, ["model.family=sdxl"])
            return
        if built.cfg.model.family == "sdxl":
            pytest.skip("the tiny recipe is SDXL already: the checks above ran on it")
        sdxl = build(recipe, tmp_path, "model.family=sdxl")
        assert sdxl.method.backbone.family == "sdxl"
        assert torch.isfinite(step_loss(sdxl.method.train(), sdxl.batch))
        assert image(sdxl.method, sdxl.batch).size == (SIDE, SIDE)
