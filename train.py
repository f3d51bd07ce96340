"""Train a method: ``python train.py [--config configs/experiment/X.yaml] [key=value ...]``.

Without arguments it trains the tiny offline InstantFamily demo on CPU. Each run lives in
``<output_dir>/<name>/`` (resolved config, checkpoints, ``trainable.safetensors``,
samples, logs). Starting a run whose folder exists resumes it from its last checkpoint;
a folder holding weights made with a different model/data/method config is refused, never
overwritten. ``group=name`` picks a preset (``data=laion_face data.root=DIR``). The config
and the data paths are checked before torch is imported: a mistake is told in one line
within a second, before the run folder is made.
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
    argv = sys.argv[1:] if argv is None else argv
    epilog = None
    if {"-h", "--help"} & set(argv):  # groups, presets and keys, read from configs/ now
        from ldm_ext.config_help import config_help

        epilog = config_help(Path(DEFAULT_CONFIG).stem)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trainer.max_steps=10")
    return parser.parse_args(argv)


# data.kind -> (the data key it reads, what that key names); demo writes its own shards
DATA_PATHS = {"shards": ("shards", "pattern"), "laion_face": ("root", "folder"),
              "celebv_text": ("root", "folder"), "folder": ("root", "folder"),
              "single_image": ("image", "file")}


def check_data_paths(cfg) -> None:
    """The data key the config's ``data.kind`` reads is set and names something that
    exists: checked in a blink, before any import of torch or the run folder."""
    from ldm_ext.config import ConfigError

    if cfg.data.kind not in DATA_PATHS:
        return
    key, what = DATA_PATHS[cfg.data.kind]
    value = cfg.data[key]
    if not value:
        raise ConfigError(f"data.kind={cfg.data.kind} needs data.{key} (the {what} of the data)")
    if "://" in str(value):  # a URL (s3://...): build_data reads it through its storage
        return
    path = Path(value)
    if (what == "folder" and not path.is_dir()) or (what == "file" and not path.is_file()):
        hint = (" (the --output of `python -m datamodules.prepare`)"
                if cfg.data.kind in ("laion_face", "celebv_text") else "")
        raise ConfigError(f"data.{key}={value!r}: no such {what}{hint}")


def preflight(cfg) -> None:
    """Checks that need no model: fail in seconds, before any weights load."""
    import torch

    from ldm_ext.config import ConfigError

    zero = cfg.trainer.strategy == "deepspeed"
    if zero and cfg.trainer.precision == "16-mixed":
        raise ConfigError(
            "trainer.precision=16-mixed with trainer.strategy=deepspeed trains without loss "
            "scaling (DeepSpeed scales fp16 autocast only without ZeRO), so small gradients "
            "underflow to 0: use bf16-mixed, or strategy=ddp for fp16 (GPUs without bf16)")
    # DeepSpeed on CPU processes is asked for by name (ldm_ext/strategy.py), never guessed
    wants_gpu = cfg.trainer.accelerator == "gpu" or (zero and cfg.trainer.accelerator != "cpu")
    if wants_gpu and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.strategy} / trainer.accelerator="
            f"{cfg.trainer.accelerator} needs CUDA GPUs and none is visible; use "
            "--config with trainer: cpu or ddp, or trainer.accelerator=cpu, on this machine")
    if zero:
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            raise ConfigError("DeepSpeed strategy but deepspeed is not installed: "
                              'pip install -e ".[deepspeed]"') from err


def build_data(cfg):
    """The DataModule, built before the run folder: a shard pattern that matches nothing
    or a folder ``prepare`` has not finished is a ConfigError naming the key."""
    from datamodules.factory import build_datamodule
    from datamodules.shards import expand_shards
    from ldm_ext.config import ConfigError

    data = cfg.data
    if data.kind == "shards":
        try:
            expand_shards(data.shards)
        except ValueError as err:
            raise ConfigError(f"data.shards={data.shards!r}: {err}") from None
    try:
        return build_datamodule(cfg)
    except FileNotFoundError as err:  # datamodules.prepared.prepared_shards
        raise ConfigError(f"data.root={data.root!r}: {err}") from None


def has_trained(run_dir: Path) -> bool:
    """Whether a run folder holds weights (a checkpoint or the trainable export)."""
    return (run_dir / "trainable.safetensors").is_file() or \
        any((run_dir / "checkpoints").glob("*.ckpt"))  # a file, or a DeepSpeed folder


def prepare_run_dir(cfg) -> tuple[Path, Path | None]:
    """Create or reopen the run folder; return it and the checkpoint to resume from.

    A folder that holds weights keeps its model, data, method and seed; one without (a
    start that failed before its first checkpoint) takes the corrected config."""
    from omegaconf import OmegaConf

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
    """Lightning Trainer with resumable checkpoints, trainable export and sample grids."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from callbacks.checkpointing import AtomicCheckpointIO, TrainableExport
    from callbacks.data_health import SkippedSamples
    from callbacks.loss_summary import LossSummary
    from callbacks.evaluation import build_evaluation_callback
    from callbacks.images import SampleGrid
    from callbacks.monitors import GradNorm, StepSpeed
    from ldm_ext.strategy import build_strategy, trainer_precision

    t = cfg.trainer
    # a DeepSpeed last.ckpt/ links the newest step folder rather than copying its GBs again;
    # without the version counter, which after a resume linked a new last-v1.ckpt instead
    last = (dict(save_last="link", enable_version_counter=False)
            if t.strategy == "deepspeed" else dict(save_last=True))
    callbacks = [
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="step{step:07d}",
                        auto_insert_metric_name=False, every_n_train_steps=t.checkpoint_every,
                        save_top_k=-1, **last),
        TrainableExport(run_dir / "trainable.safetensors"),
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
    """Train one configured (and checked: ``check_data_paths``) experiment to
    trainer.max_steps; return the run folder."""
    preflight(cfg)
    import pytorch_lightning as pl

    from ldm_ext.methods.loading import build_method

    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_data(cfg)
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
    check_data_paths(cfg)  # before torch loads: a wrong path is told in a blink
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
