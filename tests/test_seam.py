"""The method seam: a method defined only in this file, registered with one call (its
data view included), passes the method contract (tests/method_contract.py) and goes
through train.py (sample grids, the evaluation callback), eval.py (resumed with a
stochastic sampler), ``ldm_ext.generate`` and ``ldm_ext.export`` without any shared file
knowing it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from PIL import Image
from torch import nn

from datamodules.views import InstantFamilyView
from ldm_ext import training
from ldm_ext.evaluation import cli as evaluate
from ldm_ext.config import MethodConfig
from ldm_ext.losses import noise_loss
from ldm_ext.methods.base import IdentityMethod
from ldm_ext.methods.loading import load_run
from ldm_ext.pipelines.base import MethodPipeline
from ldm_ext.pipelines.sampling import decode_images, denoise, initial_latents
from ldm_ext.registry import METHODS, MethodSpec, register
from method_contract import MethodContract

TINY_EVAL = "configs/eval/tiny.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class ToyConfig(MethodConfig):
    FAMILIES: ClassVar[tuple[str, ...]] = ("sd15",)  # its step passes no SDXL conditioning

    name: str = "toy"
    lr: float = 1e-3

    @classmethod
    def scoring_encoder(cls, method) -> tuple[str, str]:
        return "facenet", "random"  # the evaluation callback scores offline


class ToyMethod(IdentityMethod):
    """Trains one linear map added to the text embedding; the UNet stays frozen."""

    def __init__(self, cfg, backbone) -> None:
        super().__init__(cfg, backbone)
        dim = backbone.unet.config.cross_attention_dim
        self.text_shift = nn.Linear(dim, dim)
        self.freeze_all_but_trainable()

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"text_shift": self.text_shift}

    def condition(self, text: torch.Tensor) -> torch.Tensor:
        return text + self.text_shift(text.float()).to(text.dtype)

    def model_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        latents = self.encode_latents(batch["pixel_values"], generator)
        text, _ = self.encode_text(self.drop_captions(batch["caption"], generator))
        noisy, t, target = self.noised_latents(latents, generator)
        pred = self.unet(noisy, t, encoder_hidden_states=self.condition(text)).sample
        return {"loss": noise_loss(pred, target)}


class ToyPipeline(MethodPipeline):
    """Text-only sampling; takes (and ignores) identities."""

    def identity(self, photo: Image.Image) -> torch.Tensor:
        return torch.zeros(1)

    @torch.no_grad()
    def __call__(self, prompt, identities, *, size=(64, 64), steps=2, guidance=3.0,
                 generator=None, negative_prompt="", progress=False, store=None):
        method = self.method
        text, _ = method.encode_text([negative_prompt, prompt])
        cond = method.condition(text)
        latents = initial_latents(self.latent_shape(size), generator, method.device, text.dtype)
        latents = denoise(self.scheduler,
                          lambda x, t: method.unet(x, t, encoder_hidden_states=cond).sample,
                          latents, steps, guidance, progress, generator)
        return decode_images(method.vae, latents)[0]


@pytest.fixture(scope="module")
def toy_registered():
    register("toy", MethodSpec(ToyConfig, ToyMethod, ToyPipeline, InstantFamilyView))
    yield
    del METHODS["toy"]


@pytest.fixture(scope="module")
def toy_experiment(tmp_path_factory) -> Path:
    """The toy's tiny recipe (what configs/experiment/ holds for a registered method)."""
    experiment = tmp_path_factory.mktemp("toy") / "toy.yaml"
    experiment.write_text(
        "defaults: {model: tiny, data: demo, trainer: cpu, logger: default}\n"
        "name: toy\nmodel: {controlnet: null}\n"
        "method: {name: toy, sample_steps: 2, sample_num_ids: [1, 2], sampler: unipc,\n"
        "         lr_schedule: step, lr_milestones: [2], lr_gamma: 0.5, warmup_steps: 1}\n")
    return experiment


class TestToyContract(MethodContract):
    """The toy passes the contract every registered method passes (tests/test_contract.py)."""

    @pytest.fixture(scope="class")
    def method_name(self, toy_registered) -> str:
        return "toy"

    @pytest.fixture(scope="class")
    def recipe(self, toy_experiment: Path) -> Path:
        return toy_experiment


@pytest.fixture(scope="module")
def toy_run(toy_registered, toy_experiment, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert training.main(["--config", str(toy_experiment), f"output_dir={out}",
                          "trainer.max_steps=3", "trainer.eval_every=3",
                          "trainer.checkpoint_every=3", "trainer.progress_bar=false",
                          "logger.wandb=false", "data.num_demo_samples=8"]) == 0
    return out / "toy"


def test_toy_method_trains_with_grids_and_evaluation(toy_run: Path):
    assert (toy_run / "trainable.safetensors").is_file()
    assert sorted(p.name for p in (toy_run / "samples").glob("*.png")) == ["step_0000003.png"]
    rows = (toy_run / "eval" / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and rows[1].startswith("3,")
    method = load_run(toy_run)
    assert type(method) is ToyMethod and set(method.trainable_modules()) == {"text_shift"}


def test_toy_lr_schedule_reaches_the_optimizer(toy_run: Path):
    """warm-up 1 step, then x0.5 from step 2: the logged lr of step 2 is half the base."""
    state = torch.load(toy_run / "checkpoints" / "last.ckpt", weights_only=False)
    (scheduler,) = state["lr_schedulers"]
    assert scheduler["_last_lr"] == pytest.approx([0.5e-3])


def test_toy_eval_resumes_identically_with_a_stochastic_sampler(toy_run: Path, tmp_path):
    """Euler draws noise at every step: replaying one initial draw per skipped image
    could not resume it; a generator per image does."""
    args = ["--config", TINY_EVAL, "--checkpoint", str(toy_run), f"output_dir={tmp_path}",
            "subjects.max_groups=1", "prompts.limit=1", "generation.sampler=euler"]
    assert evaluate.main(args) == 0
    out = tmp_path / "tiny"
    lines = (out / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["method"] for r in records} == {"toy"} and len(records) == 2
    first = (out / "images" / records[0]["file"]).read_bytes()
    (out / "manifest.jsonl").write_text(lines[1] + "\n")  # image 0 lost in an interrupt
    (out / "images" / records[0]["file"]).unlink()
    assert evaluate.main(args) == 0
    assert (out / "images" / records[0]["file"]).read_bytes() == first


def test_toy_generate_and_export_round_trip(toy_run: Path, tmp_path):
    from ldm_ext.export import main as export
    from ldm_ext.generate import main as generate

    folder = export(["--run", str(toy_run), "--out", str(tmp_path / "export")])
    index = json.loads((folder / "export.json").read_text())
    assert index == {"method": "toy", "modules": {"text_shift": "adapters"}, "global_step": 3,
                     "files": []}  # no LoRA, no released layout
    card = (folder / "README.md").read_text()
    assert "method: `toy`" in card and "trained steps: 3" in card and "eval/" in card
    images = [generate(["--run", str(run), "--prompt", "a person", "--size", "64",
                        "--steps", "2", "--out", str(tmp_path / f"{i}.png")])[0]
              for i, run in enumerate((toy_run, folder))]
    assert Image.open(images[0]).size == (64, 64)
    assert Image.open(images[0]).tobytes() == Image.open(images[1]).tobytes()


def test_per_identity_checkpoints(toy_run: Path, tmp_path, monkeypatch):
    """subjects.checkpoints: each subject's identity comes from its own fitted weights."""
    seen = []
    original = ToyPipeline.identity_from_weights

    def spy(self, path):
        seen.append(Path(path).name)
        return original(self, path)

    monkeypatch.setattr(ToyPipeline, "identity_from_weights", spy)
    ids = ["astronaut", "t1_0", "t1_1", "t1_2"]
    weights = {sid: tmp_path / f"{sid}.safetensors" for sid in ids}
    for path in weights.values():
        path.write_bytes((toy_run / "trainable.safetensors").read_bytes())
    config = tmp_path / "per_id.yaml"

    def write_config():
        mapping = json.dumps({sid: str(path) for sid, path in weights.items()})
        config.write_text(Path(TINY_EVAL).read_text().replace(
            "subjects:\n", f"subjects:\n  checkpoints: {mapping}\n", 1))

    write_config()
    args = ["--config", str(config), "--checkpoint", str(toy_run), f"output_dir={tmp_path}",
            "subjects.max_groups=1", "prompts.limit=1"]
    assert evaluate.main(args) == 0
    assert sorted(seen) == sorted(f"{s}.safetensors" for s in ids)
    assert len((tmp_path / "tiny" / "manifest.jsonl").read_text().splitlines()) == 2
    del weights["t1_2"]
    write_config()
    assert evaluate.main(args + ["name=missing"]) == 2
