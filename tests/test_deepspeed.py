"""DeepSpeed ZeRO: the strategy each trainer config builds, checkpoint folders that hold only
what trains, read without DeepSpeed (a folder made in its layout), and the real path: two
CPU processes (DeepSpeed's CPU accelerator, gloo) training, checkpointing and resuming."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm_ext.config import ConfigError, load_config
from ldm_ext.weights import CheckpointError, ZERO_LATEST, ZERO_MODEL_STATES, read_state

ROOT = Path(__file__).resolve().parent.parent
DEMO = "configs/experiment/demo.yaml"
ZERO = ["trainer=deepspeed_zero2", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.precision=bf16-mixed", "trainer.checkpoint_every=2", "trainer.sample_every=2",
        "trainer.progress_bar=false",
        "trainer.log_every=1", "logger.wandb=false", "method.sample_steps=2",
        "method.sample_num_ids=[1,2]", "data.num_demo_samples=32"]  # one shard per rank


# ----- the strategy, from each config --------------------------------------------------
def test_strategy_from_each_trainer_config():
    from ldm_ext.strategy import TrainableZeroStrategy, build_strategy, trainer_precision

    assert build_strategy(load_config(DEMO, ["trainer=cpu"])) == "auto"
    ddp = load_config(DEMO, ["trainer=ddp"])
    assert build_strategy(ddp) == "ddp" and trainer_precision(ddp) == "bf16-mixed"
    recipe = load_config("configs/experiment/instantfamily_sd15.yaml")
    gpu = build_strategy(recipe)
    assert type(gpu) is TrainableZeroStrategy and gpu.exclude_frozen_parameters
    # bf16-mixed is DeepSpeed's autocast, not its bf16 mode (which casts module and inputs)
    assert gpu.config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in gpu.config and trainer_precision(recipe) == "32-true"
    zero = gpu.config["zero_optimization"]
    assert zero["stage"] == 2 and "offload_optimizer" not in zero
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 200_000_000
    assert gpu.config["train_micro_batch_size_per_gpu"] == 8  # data.batch_size


def test_strategy_options_are_config_keys():
    from ldm_ext.strategy import CPUZeroStrategy, build_strategy

    cfg = load_config(DEMO, ["trainer=deepspeed_zero2", "trainer.accelerator=cpu",
                             "trainer.devices=3", "trainer.zero_stage=1",
                             "trainer.offload_optimizer=true", "trainer.bucket_size=1000"])
    strategy = build_strategy(cfg)
    assert isinstance(strategy, CPUZeroStrategy)
    assert strategy.process_group_backend == "gloo"
    assert [d.index for d in strategy.parallel_devices] == [0, 1, 2]  # device = local rank
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 1 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 1000


@pytest.mark.parametrize("override", ["trainer.zero_stage=3", "trainer.bucket_size=0"])
def test_bad_zero_option_is_named(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(DEMO, ["trainer=deepspeed_zero2", override])


def test_trainable_state_only_drops_frozen_parameters_and_buffers():
    from ldm_ext.strategy import trainable_state_only

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2),
                                torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    with trainable_state_only(model):
        assert set(model.state_dict()) == {"2.weight", "2.bias"}
    assert "1.running_mean" in model.state_dict()  # the hook is gone afterwards


# ----- a checkpoint folder in DeepSpeed's layout, read without DeepSpeed ----------------
def write_zero_layout(folder: Path, module: dict[str, torch.Tensor], stage: int = 2) -> Path:
    """What ``DeepSpeedEngine.save_checkpoint(folder, tag="checkpoint")`` writes on rank 0
    (the parts we read): ``latest`` naming the tag, the module state under the tag."""
    (folder / "checkpoint").mkdir(parents=True)
    (folder / ZERO_LATEST).write_text("checkpoint")
    torch.save({"module": module, "buffer_names": [], "optimizer": None,
                "ds_config": {"zero_optimization": {"stage": stage}}, "global_step": 2},
               folder / "checkpoint" / ZERO_MODEL_STATES)
    return folder


def test_zero_layout_reads_as_fp32_trainable_weights(tmp_path):
    module = {"adapter.weight": torch.randn(3, 2, dtype=torch.bfloat16)}
    state = read_state(write_zero_layout(tmp_path / "last.ckpt", module))
    assert state["adapter.weight"].dtype == torch.float32
    torch.testing.assert_close(state["adapter.weight"], module["adapter.weight"].float())


def test_zero_stage_3_and_unfinished_folders_are_refused(tmp_path):
    folder = write_zero_layout(tmp_path / "z3", {"a": torch.zeros(1)}, stage=3)
    with pytest.raises(CheckpointError, match="zero_to_fp32"):
        read_state(folder)
    (folder / ZERO_LATEST).write_text("missing_tag")
    with pytest.raises(CheckpointError, match="unfinished"):
        read_state(folder)


def test_zero_folder_inside_a_run_loads_like_a_ckpt(tmp_path):
    """``load_run`` (eval.py --checkpoint, generation) takes a DeepSpeed folder of a run."""
    from ldm_ext.config import to_yaml
    from ldm_ext.methods.loading import RUN_CONFIG, build_method, load_run, run_folder

    cfg = load_config(DEMO, ["trainer=deepspeed_zero2"])
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / RUN_CONFIG).write_text(to_yaml(cfg))
    trained = {k: torch.randn_like(v) for k, v in build_method(cfg).trainable_state_dict().items()}
    folder = write_zero_layout(run / "checkpoints" / "last.ckpt", trained)
    assert run_folder(folder) == (run, folder)
    method = load_run(folder)
    for name, param in method.trainable_parameters().items():
        torch.testing.assert_close(param.detach(), trained[name])


# ----- the real path: two CPU processes under DeepSpeed ZeRO-2 -------------------------
def train_zero(out: Path, name: str, steps: int) -> str:
    """Run train.py (it starts the second process itself); return its stderr."""
    cmd = [sys.executable, "train.py", f"output_dir={out}", f"name={name}",
           f"trainer.max_steps={steps}", *ZERO]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory) -> Path:
    """``straight``: 4 steps; ``resumed``: 2 steps, then restarted to 4 from its folder."""
    out = tmp_path_factory.mktemp("zero")
    train_zero(out, "straight", 4)
    train_zero(out, "resumed", 2)
    assert "resuming" in train_zero(out, "resumed", 4)  # from checkpoints/last.ckpt/
    return out


@pytest.mark.slow
def test_zero_checkpoint_holds_trainable_weights_and_optimizer_only(zero_runs: Path):
    run = zero_runs / "straight"
    folder = run / "checkpoints" / "step0000004.ckpt"
    exported = load_file(run / "trainable.safetensors")
    states = torch.load(folder / "checkpoint" / ZERO_MODEL_STATES, weights_only=True)
    assert set(states["module"]) == set(exported)  # no frozen parameter, no buffer
    assert states["global_step"] == 4 and states["frozen_param_shapes"] is None
    assert {t.dtype for t in states["module"].values()} == {torch.float32}  # autocast
    shards = sorted(p.name for p in (folder / "checkpoint").glob("zero_pp_rank_*"))
    assert len(shards) == 2  # ZeRO: one optimizer shard per rank
    # what DeepSpeed really writes passes the weights-only check run before each resume
    from ldm_ext.strategy import zero_state_classes
    from ldm_ext.weights import check_zero_folder

    check_zero_folder(folder, zero_state_classes())
    with pytest.raises(CheckpointError, match="optim_states.pt: refused.*LossScaler"):
        check_zero_folder(folder)  # the allowed classes are needed, and suffice
    assert (run / "samples" / "step_0000002.png").is_file()  # rank 0 sampled mid-run
    # fp32 weights once in the module state, and per shard half of AdamW's fp32
    # master weights and two moments: 4x the trainable bytes in all, plus small run state
    trainable = sum(t.numel() * 4 for t in exported.values())
    size = sum(p.stat().st_size for p in (folder / "checkpoint").iterdir())
    assert 4 * trainable < size < 4.2 * trainable, (size, trainable)


@pytest.mark.slow
def test_zero_logs_the_gradient_norm_deepspeed_computed(zero_runs: Path):
    """ZeRO keeps gradients in its own buffers: the logged norm is its engine's (each step,
    before clipping at trainer.gradient_clip_val = 1), as are lr and throughput."""
    with (zero_runs / "straight" / "csv" / "version_0" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    norms = [float(r["train/grad_norm"]) for r in rows if r["train/grad_norm"]]
    assert len(norms) == 4 and all(math.isfinite(n) and n > 0 for n in norms)
    assert [float(r["train/lr"]) for r in rows if r["train/lr"]] == [3e-3] * 4
    assert all(float(r["perf/samples_per_s"]) > 0 for r in rows if r["perf/samples_per_s"])


@pytest.mark.slow
def test_zero_resume_matches_uninterrupted(zero_runs: Path):
    a = load_file(zero_runs / "straight" / "trainable.safetensors")
    b = load_file(zero_runs / "resumed" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # as tests/test_train.py: one AdamW step is ~lr, far above 1e-5
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    at_2 = read_state(zero_runs / "resumed" / "checkpoints" / "step0000002.ckpt")
    assert any(not torch.equal(at_2[k], b[k]) for k in b)  # steps 3-4 trained after resume


@pytest.mark.slow
def test_zero_checkpoint_reads_as_the_export_and_as_deepspeeds_own(zero_runs: Path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from ldm_ext.methods.loading import load_run

    run = zero_runs / "resumed"
    last = run / "checkpoints" / "last.ckpt"
    assert last.resolve() == (run / "checkpoints" / "step0000004.ckpt").resolve()  # a link
    exported = load_file(run / "trainable.safetensors")  # both written at step 4
    ours = read_state(last)
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(last))  # fp32 master shards
    assert ours.keys() == exported.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], exported[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    method = load_run(last)  # eval.py --checkpoint and generation
    for name, param in method.trainable_parameters().items():
        torch.testing.assert_close(param.detach(), exported[name], rtol=0, atol=0)
