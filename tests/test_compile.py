"""Compile-ready: every method's UNet (and ControlNet) traces as one graph with its attention
processors, in a training step and in sampling (``torch.compile(fullgraph=True)`` raises on
any graph break). The eager backend traces without generating kernels, so this stays fast."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from callbacks.images import cycled
from datamodules.factory import build_datamodule
from ldm_ext import training
from ldm_ext.config import load_config
from ldm_ext.methods.loading import build_method

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
FAST = ["data.batch_size=2", "data.num_workers=0", "method.sample_steps=1"]
EXPERIMENTS = ["demo", "storymaker_demo", "portraitbooth_demo", "sefi_ide_tiny"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(path)
    return str(path)


def config(experiment: str, photo: str, *extra: str):
    image = [f"data.image={photo}"] if experiment.startswith("sefi") else []
    return load_config(f"configs/experiment/{experiment}.yaml", FAST + image + list(extra))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_compiled_step_and_sampling_have_no_graph_break(experiment, photo):
    cfg = config(experiment, photo)
    method = build_method(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    torch._dynamo.reset()
    method.compile_models(backend="eager")
    assert all(m._compiled_call_impl is not None for m in method.diffusion_models())
    losses = method.model_step(batch, torch.Generator().manual_seed(0))
    losses["loss"].backward()
    identities = method.batch_identities(batch)
    count = max(cfg.method.sample_num_ids)
    with torch.no_grad():
        image = method.pipeline()(
            cfg.method.sample_prompts[0], None if identities is None else cycled(identities, count),
            size=(cfg.data.resolution,) * 2, steps=1, guidance=cfg.method.guidance_scale,
            generator=torch.Generator().manual_seed(0), progress=False)
    assert image.size == (cfg.data.resolution,) * 2


def test_trainer_compile_trains_through_the_compiled_unet(tmp_path, photo):
    """``trainer.compile=true`` compiles in train.py and a run still trains and samples."""
    code = training.main(["--config", "configs/experiment/demo.yaml", f"output_dir={tmp_path}",
                          "name=compiled", "trainer.max_steps=1", "trainer.compile=true",
                          "trainer.compile_backend=eager", "trainer.progress_bar=false",
                          "logger.wandb=false", "method.sample_steps=1", "data.batch_size=2",
                          "data.num_workers=0", "method.sample_num_ids=[2]"])
    run = tmp_path / "compiled"
    assert code == 0 and (run / "trainable.safetensors").is_file()
    assert list((run / "samples").glob("*.png"))
