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
    assert cfg.trainer.strategy == "deepspeed" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.zero_stage == 2 and not cfg.trainer.offload_optimizer
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
    from ldm_ext import backbone, training

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(backbone, "load_backbone", boom)
    assert training.main(["--config", DEMO, "method.lrr=1"]) == 2


def test_deepspeed_with_fp16_is_refused_before_the_run(tmp_path, capsys):
    """fp16 autocast under ZeRO gets no loss scaling: refused by name, on any machine."""
    from ldm_ext import training

    rc = training.main(["--config", "configs/experiment/instantfamily_sd15.yaml",
                        "trainer.precision=16-mixed", f"output_dir={tmp_path}",
                        f"data.root={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "16-mixed" in err and "loss scaling" in err
    assert not (tmp_path / "instantfamily_sd15").exists()


def test_deepspeed_without_cuda_fails_fast(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from ldm_ext import training

    rc = training.main(["--config", "configs/experiment/instantfamily_sd15.yaml",
                        f"output_dir={tmp_path}", f"data.root={tmp_path}"])
    assert rc == 2 and "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "instantfamily_sd15").exists()


# ----- group presets by name, values of the wrong kind ------------------------------------
def test_group_preset_by_name_on_the_command_line():
    """data=laion_face picks configs/data/laion_face.yaml (before: silently dropped, so the
    run trained on demo data); the later data.root override still applies."""
    cfg = load_config(DEMO, ["data=laion_face", "data.root=shards/here", "model=tiny_sdxl",
                             "trainer=ddp", "method=instantfamily"])
    assert (cfg.data.kind, cfg.data.root, cfg.data.random_flip) == ("laion_face",
                                                                      "shards/here", True)
    assert cfg.model.family == "sdxl" and cfg.trainer.strategy == "ddp"
    assert cfg.trainer.max_steps == 500  # the experiment body still overrides the preset


@pytest.mark.parametrize("override, words", [
    ("data=5", ["data=5", "laion_face"]),
    ("data=lion_face", ["lion_face", "not a data preset", "celebv_text, demo, laion_face"]),
    ("trainer=[1]", ["trainer=", "not a trainer preset"]),
])
def test_group_value_of_the_wrong_kind_is_named(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert all(w in str(err.value) for w in words), str(err.value)


def test_preset_name_in_an_experiment_body_is_named(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {model: tiny, data: demo, trainer: cpu, method: instantfamily}\n"
                   "name: x\ndata: laion_face\n")
    with pytest.raises(ConfigError, match="'data' must hold data keys") as err:
        load_config(bad)
    assert str(bad) in str(err.value) and "defaults" in str(err.value)


# ----- ranges -----------------------------------------------------------------------------
@pytest.mark.parametrize("override", [
    "trainer.max_steps=0", "trainer.max_steps=-5", "data.batch_size=0",
    "trainer.checkpoint_every=0", "data.resolution=0", "method.empty_prompt_prob=1.5",
    "method.sample_num_ids=[0,2]", "method.num_slots=0", "method.mask_margin=-0.1",
    "seed=-1",
])
def test_values_that_cannot_work_are_refused(override):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    key = override.split("=")[0]
    assert f"command line: {key}=" in str(err.value) and "must be" in str(err.value)


# ----- data paths and the run folder ------------------------------------------------------
def test_wrong_data_root_is_caught_before_the_run_folder(tmp_path, capsys):
    from ldm_ext import training

    for root, words in [(tmp_path / "nowhere", "no such folder"),
                        (tmp_path, "no finished `prepare` output")]:
        rc = training.main(["data=laion_face", f"data.root={root}", f"output_dir={tmp_path}",
                            "name=run", "trainer.max_steps=1", "logger.wandb=false"])
        err = capsys.readouterr().err
        assert rc == 2 and "data.root" in err and words in err, err
        assert not (tmp_path / "run").exists()


def test_run_folder_without_weights_takes_a_corrected_config(tmp_path):
    """A start that failed before its first checkpoint left config.yaml: the corrected
    config may reuse the folder; once it holds weights, a different config is refused."""
    from ldm_ext import training

    first = load_config(DEMO, [f"output_dir={tmp_path}", "data.kind=laion_face",
                               "data.root=wrong"])
    fixed = load_config(DEMO, [f"output_dir={tmp_path}"])
    run_dir, _ = training.prepare_run_dir(first)
    assert training.prepare_run_dir(fixed) == (run_dir, None)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match="different data"):
        training.prepare_run_dir(first)


def test_config_error_takes_under_three_seconds():
    """A config mistake is reported before torch is imported (it took 13-17 s of imports)."""
    import subprocess
    import sys
    import time

    code = ("import sys; from ldm_ext import training\n"
            "rc = training.main(['trainer.max_steps=0']); print(rc, 'torch' in sys.modules)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "trainer.max_steps" in done.stderr
    assert seconds < 3.0, f"{seconds:.1f} s"


# ----- switching the method of an experiment ----------------------------------------------
@pytest.mark.parametrize("experiment, override, made_for", [
    (DEMO, "method=storymaker", "storymaker_demo.yaml"),
    ("configs/experiment/storymaker_demo.yaml", "method=instantfamily", "demo.yaml"),
    # before: loaded, keeping InstantFamily's ControlNet, data and sample settings
    ("configs/experiment/instantfamily_sd15.yaml", "method=portraitbooth",
     "portraitbooth_sd15.yaml"),
    (DEMO, "method.name=sefi_ide", "sefi_ide_tiny.yaml"),
])
def test_another_method_on_an_experiment_names_the_experiment_to_use(experiment, override,
                                                                      made_for):
    """An experiment's method keys, model and data were made for its method: another
    method on top is refused in one line naming the experiments made for it (closest
    presets first), instead of failing on a foreign key or keeping the shared ones."""
    with pytest.raises(ConfigError) as err:
        load_config(experiment, [override])
    message = str(err.value)
    assert "\n" not in message and override in message and experiment in message
    assert f"--config configs/experiment/{made_for}" in message, message


def test_the_same_method_on_its_experiment_is_fine():
    assert load_config(DEMO, ["method=instantfamily"]).method.name == "instantfamily"


@pytest.mark.parametrize("recipe", sorted(Path("configs/experiment").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_sample_prompts_name_a_subject_for_every_grid_column(recipe: Path):
    """A method that places identities on subject words (``identity_words``) refuses a
    prompt with fewer of them than identities: the end-of-run grid renders every sample
    prompt with each of ``sample_num_ids``, so each prompt must name the largest count."""
    from ldm_ext.word_tokens import word_spans

    method = load_config(recipe).method
    words = list(method.get("identity_words") or [])
    if not words:
        return
    for prompt in method.sample_prompts:
        assert len(word_spans(prompt, words)) >= max(method.sample_num_ids), prompt
