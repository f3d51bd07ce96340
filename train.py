"""Train a method: ``python train.py [--config configs/experiment/X.yaml] [key=value ...]``.

Without arguments it trains the tiny offline InstantFamily demo on CPU. Each run lives in
``<output_dir>/<name>/`` (resolved config, checkpoints, ``trainable.safetensors``,
samples, logs). Starting a run whose folder exists resumes it from its last checkpoint;
a folder holding weights made with a different model/data/method config is refused, never
overwritten. ``group=name`` picks a preset (``data=laion_face data.root=DIR``). The config,
the data paths (and URLs) and the trainer's devices are checked before torch is imported
(``check_config``): a mistake is told in one line within seconds, before the run folder is
made.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

# idle OpenMP threads sleep instead of spinning: on a shared or busy CPU host a spinning
# thread pool made the demo 12x slower (7 min 35 s against 37 s, same steps)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_CONFIG = "configs/experiment/demo.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from ldm_ext.cli import ArgumentParser

    argv = sys.argv[1:] if argv is None else argv
    epilog = None
    if {"-h", "--help"} & set(argv):  # groups, presets and keys, read from configs/ now
        from ldm_ext.config_help import config_help

        epilog = config_help(Path(DEFAULT_CONFIG).stem)
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trainer.max_steps=10")
    return parser.parse_args(argv)


def check_data_paths(cfg) -> None:
    """The data key the config's ``data.kind`` reads is set and, as a local path, names
    something that exists: checked in a blink, before any import of torch."""
    from ldm_ext.config import ConfigError
    from ldm_ext.registry import data_kind

    kind = data_kind(cfg.data.kind)  # what it reads (DATA_KINDS); demo writes its own shards
    if kind.source is None:
        return
    key, what = kind.source, kind.names
    value = cfg.data[key]
    if not value:
        raise ConfigError(f"data.kind={cfg.data.kind} needs data.{key} (the {what} of the data)")
    if "://" in str(value):  # a URL (s3://...): check_data_store reaches it
        return
    path = Path(value)
    if (what == "folder" and not path.is_dir()) or (what == "file" and not path.is_file()):
        hint = " (the --output of `python -m datamodules.prepare`)" if kind.prepare else ""
        raise ConfigError(f"data.{key}={value!r}: no such {what}{hint}")


def check_data_store(cfg) -> None:
    """A shard pattern (``data.shards``) matches shards and a ``prepare`` output
    (``data.root``) is finished, local or a URL; a URL's store errors (no credentials, no
    bucket) are one line naming the key, as ``prepare`` tells them."""
    from ldm_ext.config import ConfigError
    from ldm_ext.registry import data_kind

    kind = data_kind(cfg.data.kind)
    if kind.names != "pattern" and not kind.prepare:
        return
    from datamodules import storage
    from datamodules.shard_folder import prepared_shards

    key = kind.source
    value = cfg.data[key]
    with storage.named_errors(f"data.{key}", value):
        if kind.names == "pattern":
            if not storage.expand(value):
                raise ConfigError(f"data.{key}={value!r}: no shards match")
            return
        try:
            prepared_shards(value, kind.prepare)
        except FileNotFoundError as err:
            raise ConfigError(f"data.root={value!r}: {err}") from None


def check_trainer(cfg) -> None:
    """Trainer settings that cannot work here (DeepSpeed with fp16, GPUs on a machine
    without CUDA, fp16 frozen weights on a CPU, DeepSpeed not installed), found without importing torch where this
    machine plainly has no GPU (``ldm_ext.devices``) and without loading Lightning."""
    import importlib.util

    from ldm_ext.config import ConfigError
    from ldm_ext.devices import cuda_device_count

    t = cfg.trainer
    zero = t.strategy == "deepspeed"
    if zero and t.precision == "16-mixed":
        raise ConfigError(
            "trainer.precision=16-mixed with trainer.strategy=deepspeed trains without loss "
            "scaling (DeepSpeed scales fp16 autocast only without ZeRO), so small gradients "
            "underflow to 0: use bf16-mixed, or strategy=ddp for fp16 (GPUs without bf16)")
    # several processes (DDP, DeepSpeed) on CPUs are asked for by name, never guessed
    parallel = t.strategy != "auto" or t.devices * t.num_nodes > 1
    if t.accelerator == "gpu" or (parallel and t.accelerator != "cpu"):
        found, needed = cuda_device_count(), max(t.devices, 1)
        if found < needed:
            seen = f"{found} are visible" if found else "none is visible"
            raise ConfigError(
                f"trainer.strategy={t.strategy} / trainer.accelerator={t.accelerator} / "
                f"trainer.devices={t.devices} needs {needed} CUDA GPU(s) and {seen}; use "
                "trainer.accelerator=cpu (CPU processes), fewer trainer.devices, or --config "
                "with trainer: cpu on this machine")
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not cuda_device_count())
    if on_cpu and cfg.model.weight_dtype == "fp16":  # a CPU has bf16 kernels, not fp16 ones
        raise ConfigError(
            "model.weight_dtype=fp16 on the CPU: its fp16 convolutions fall back to a slow "
            "path (a 3x3 conv 160x slower than fp32, an SDXL step not done in 10 min); use "
            "model.weight_dtype=bf16 (the same bytes) or fp32")
    if zero and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("DeepSpeed strategy but deepspeed is not installed: "
                          'pip install -e ".[deepspeed]"')


def check_config(cfg) -> None:
    """Everything about a loaded config that can be checked from its values and the files
    it names, in a second or two, before torch, Lightning or a model loads and before the
    run folder is made."""
    check_data_paths(cfg)
    check_trainer(cfg)
    check_data_store(cfg)


def has_trained(run_dir: Path) -> bool:
    """Whether a run folder holds weights (a checkpoint or the trainable export)."""
    return (run_dir / "trainable.safetensors").is_file() or \
        any((run_dir / "checkpoints").glob("*.ckpt"))  # a file, or a DeepSpeed folder


def prepare_run_dir(cfg) -> tuple[Path, Path | None]:
    """Create or reopen the run folder; return it and the checkpoint to resume from.

    A folder that holds weights keeps its model, data, method and seed; one without (a
    start that failed before its first checkpoint) takes the corrected config. Temporary
    files of saves a killed run left unfinished are removed."""
    from omegaconf import OmegaConf

    from callbacks.checkpointing import remove_partial_saves
    from ldm_ext.config import ConfigError, to_yaml
    from ldm_ext.methods.loading import RUN_CONFIG, saved_config

    run_dir = Path(cfg.output_dir) / cfg.name
    previous = saved_config(run_dir)
    if previous is not None:
        changed = [g for g in ("model", "data", "method", "seed")
                   if OmegaConf.select(previous, g) != OmegaConf.select(cfg, g)]
        if changed and has_trained(run_dir):
            raise ConfigError(
                f"run folder {run_dir} exists with a different {', '.join(changed)} config; "
                "choose another name=... or delete the folder (it is never overwritten)")
        if changed:
            print(f"{run_dir} has no checkpoint yet: restarting it with the new "
                  f"{', '.join(changed)} config", file=sys.stderr)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / "checkpoints"):  # a killed run's unfinished writes
        remove_partial_saves(folder)
    (run_dir / RUN_CONFIG).write_text(to_yaml(cfg))
    last = run_dir / "checkpoints" / "last.ckpt"  # a folder under DeepSpeed
    return run_dir, (last if last.exists() else None)


def build_loggers(cfg, run_dir: Path) -> list:
    """CSV always (if enabled) plus wandb: online with WANDB_API_KEY, else offline. The
    wandb run is the run folder's own (``ldm_ext/tracking.py``: its id kept in
    ``<run>/wandb_id``, so a resume continues it) and its config is the whole resolved
    config."""
    from omegaconf import OmegaConf
    from pytorch_lightning.loggers import CSVLogger

    from ldm_ext.tracking import init_args, run_tags
    from ldm_ext.wandb_logger import ConfigLogger

    loggers = []
    log = cfg.logger
    if log.wandb:
        tags = run_tags(cfg.method.name, cfg.model.family, log.recipe, *log.tags)
        init = init_args(run_dir, name=cfg.name, project=log.project, mode=log.wandb_mode,
                         group=log.group or cfg.method.name, job_type=log.job_type, tags=tags,
                         config=OmegaConf.to_container(cfg, resolve=True))
        loggers.append(ConfigLogger(save_dir=init.pop("dir"), **init))  # Lightning's name
    if log.csv or not loggers:
        # a new version_<n>/ per (re)start: Lightning's CSV writer would clear the old file
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
    return loggers


def build_trainer(cfg, run_dir: Path):
    """Lightning Trainer with resumable checkpoints (``trainable.safetensors`` published
    after each), sample grids and logs."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, TQDMProgressBar

    from callbacks.checkpointing import AtomicCheckpointIO, RunCheckpoint
    from callbacks.data_health import SkippedSamples
    from callbacks.loss_summary import LossSummary
    from callbacks.evaluation import build_evaluation_callback
    from callbacks.images import SampleGrid
    from callbacks.monitors import GradNorm, StepSpeed
    from ldm_ext.strategy import build_strategy, trainer_precision

    t = cfg.trainer
    # a DeepSpeed last.ckpt/ links the newest step folder rather than copying its GBs again
    callbacks = [
        RunCheckpoint(run_dir / "trainable.safetensors", dirpath=str(run_dir / "checkpoints"),
                      filename="step{step:07d}", auto_insert_metric_name=False,
                      every_n_train_steps=t.checkpoint_every, save_top_k=-1,
                      save_last="link" if t.strategy == "deepspeed" else True),
        SampleGrid(run_dir / "samples", t.sample_every, max(cfg.method.sample_num_ids),
                   seed=cfg.seed),
        SkippedSamples(t.log_every),
        LossSummary(),
        LearningRateMonitor(logging_interval="step"),  # train/lr (per param group)
        GradNorm(),  # train/grad_norm, before clipping
        StepSpeed(t.log_every),  # perf/s_per_step, perf/samples_per_s, peak GPU memory
    ]
    evaluation = build_evaluation_callback(cfg, run_dir)  # None unless trainer.eval_every
    if evaluation is not None:
        callbacks.append(evaluation)
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    # DeepSpeed writes its checkpoint folders itself, without a CheckpointIO
    plugins = [] if t.strategy == "deepspeed" else [AtomicCheckpointIO()]
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=build_strategy(cfg), precision=trainer_precision(cfg), max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val or None, log_every_n_steps=t.log_every,
        callbacks=callbacks, logger=build_loggers(cfg, run_dir), plugins=plugins,
        enable_progress_bar=t.progress_bar, default_root_dir=str(run_dir),
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=False)


def run(cfg) -> Path:
    """Train one configured and checked (``check_config``) experiment to
    trainer.max_steps; return the run folder."""
    import pytorch_lightning as pl

    from datamodules.factory import build_datamodule
    from ldm_ext.methods.loading import build_method

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    run_dir, resume_from = prepare_run_dir(cfg)
    if resume_from is not None:
        print(f"resuming {run_dir} from {resume_from}", file=sys.stderr)
    method = build_method(cfg)
    method.set_gradient_checkpointing(cfg.trainer.gradient_checkpointing)
    if cfg.trainer.compile:
        method.compile_models(cfg.trainer.compile_backend)
    trainer = build_trainer(cfg, run_dir)
    # frozen encoders and backbones stay in eval mode on purpose (ldm_ext/methods/base.py)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    trainer.fit(method, datamodule=datamodule, ckpt_path=resume_from)
    return run_dir


def train(argv: list[str] | None) -> int:
    """Parse, check the config (imports nothing heavy before that), train."""
    from ldm_ext.config import load_config

    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_config(cfg)  # before torch loads: a mistake is told in a blink
    from ldm_ext.methods.base import NonFiniteLossError
    from ldm_ext.run_summary import print_summary

    try:
        run_dir = run(cfg)
    except NonFiniteLossError as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 3
    print_summary(run_dir, f"trained {cfg.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 trained; 2 a config or input mistake, told in one line; 3 a
    non-finite loss stopped training (the last good checkpoint stays)."""
    from ldm_ext.cli import run_cli

    return run_cli(train, argv, prog="train")


if __name__ == "__main__":
    sys.exit(main())
