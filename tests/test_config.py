"""Config composition and validation: errors name the key and the file, before any model loads."""
from pathlib import Path

import pytest

from ldm_ext.config import ConfigError, load_config

DEMO = "configs/experiment/demo.yaml"


def test_demo_composes_groups_and_overrides():
    cfg = load_config(DEMO, ["trainer.max_steps=7", "method.mask_mode=hard"])
    assert cfg.model.pretrained == "tiny" and cfg.data.kind == "demo"
    assert cfg.trainer.max_steps == 7 and cfg.method.mask_mode == "hard"
    assert cfg.method.num_slots == 4  # from configs/method/instantfamily.yaml


def test_paper_recipe_values():
    cfg = load_config("configs/experiment/instantfamily_sd15.yaml")
    assert (cfg.model.family, cfg.model.controlnet) == ("sd15", "from_unet")
    assert cfg.method.lr == 1e-5 and cfg.method.num_slots == 4
    assert cfg.method.empty_prompt_prob == 0.5 and cfg.data.resolution == 512
    assert cfg.data.batch_size == 8 and cfg.trainer.devices == 8
    assert cfg.trainer.strategy == "deepspeed_stage_2" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.max_steps == 400_000


@pytest.mark.parametrize("override, words", [
    ("method.lrr=1", ["method.lrr", "command line"]),
    ("trainer.max_steps=abc", ["trainer.max_steps"]),
    ("method.mask_mode=soft", ["method.mask_mode"]),
    ("method.name=nope", ["method.name", "nope"]),
    ("modle.family=sd15", ["modle"]),
])
def test_bad_override_is_named(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert all(w in str(err.value) for w in words), str(err.value)


def test_bad_key_in_file_names_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {model: tiny, data: demo, trainer: cpu, method: instantfamily}\n"
                   "name: x\ndata: {batch_sise: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "data.batch_sise" in str(err.value) and str(bad) in str(err.value)


def test_missing_required_value(tmp_path: Path):
    cfg = tmp_path / "noname.yaml"
    cfg.write_text("defaults: {model: tiny, data: demo, trainer: cpu, method: instantfamily}\n")
    with pytest.raises(ConfigError, match="name"):
        load_config(cfg)


def test_bad_override_fails_before_models_load(monkeypatch):
    """train.py reports a bad key and exits 2 without touching any loader."""
    import train
    from ldm_ext import backbone

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(backbone, "load_backbone", boom)
    assert train.main(["--config", DEMO, "method.lrr=1"]) == 2


def test_deepspeed_without_cuda_fails_fast(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    import train

    rc = train.main(["--config", "configs/experiment/instantfamily_sd15.yaml",
                     f"output_dir={tmp_path}"])
    assert rc == 2 and "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "instantfamily_sd15").exists()
