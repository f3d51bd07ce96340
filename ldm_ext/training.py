"""Training, the application behind ``python train.py`` (and ``idforge-train``), and the run
that ``ldm_ext.fit`` trains too.

Each run lives in ``<output_dir>/<name>/`` (resolved config, checkpoints,
``trainable.safetensors``, samples, logs). Starting a run whose folder exists resumes it
from its last checkpoint; a folder holding weights made with a different model, data,
method or seed (``RECIPE``) is refused, never overwritten. The config, the data paths (and
URLs) and the trainer's devices are checked before torch is imported
(``ldm_ext.training_checks``): a mistake is told in one line within seconds, before the run
folder is made. An application (``ldm_ext.commands.APPLICATIONS``): it builds the
DataModule (``datamodules``) and the callbacks (``callbacks``); only train.py and the other
applications import it.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ldm_ext.cli import ArgumentParser, run_training_cli
from ldm_ext.config_layers import CONFIG_ROOT

DEFAULT_CONFIG = str(CONFIG_ROOT / "experiment" / "demo.yaml")
DESCRIPTION = ("Train a method: train.py [--config configs/experiment/X.yaml] [key=value ...].\n"
               "Without arguments it trains the tiny offline InstantFamily demo on CPU.")
RECIPE = ("model", "data", "method", "seed")  # what a run folder's weights were made with


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
        changed = [g for g in RECIPE
                   if OmegaConf.select(previous, g) != OmegaConf.select(cfg, g)]
        if changed and has_trained(run_dir):
            raise ConfigError(
                f"run folder {run_dir} exists with a different {', '.join(changed)} config; "
                "choose another name=... or delete the folder (it is never overwritten)")
        if changed:
            print(f"{run_dir} has no checkpoint yet: restarting it with the new "
                  f"{', '.join(changed)} config", file=sys.stderr)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / "checkpoints"):  # temporary files of unfinished saves
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
        # each (re)start writes a version_<n>/ of its own: a resume keeps the earlier rows
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
    from callbacks.monitors import GradNorm, StepMemory, StepSpeed
    from ldm_ext.strategy import build_strategy, trainer_precision

    t = cfg.trainer
    # under DeepSpeed last.ckpt/ is a link to the newest step folder, never a copy of it
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
        StepSpeed(t.log_every),  # perf/s_per_step, perf/samples_per_s
        StepMemory(),  # perf/step_mem_gib (forward + backward), peak GPU memory
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--config`` and the ``key=value`` overrides; ``--help`` also lists the config
    groups, their presets, the experiments and every key, read from ``configs/``."""
    argv = sys.argv[1:] if argv is None else argv
    epilog = None
    if {"-h", "--help"} & set(argv):
        from ldm_ext.config_help import config_help

        epilog = config_help(Path(DEFAULT_CONFIG).stem)
    parser = ArgumentParser(description=DESCRIPTION, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="experiment YAML (default: configs/experiment/demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trainer.max_steps=10")
    return parser.parse_args(argv)


def train(argv: list[str] | None) -> int:
    """Parse, check the config (nothing heavy is imported before that), train."""
    from ldm_ext.config import load_config
    from ldm_ext.training_checks import check_config

    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_config(cfg)
    from ldm_ext.run_summary import print_summary

    print_summary(run(cfg), f"trained {cfg.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 trained; 2 a config or input mistake, told in one line; 3 a
    non-finite loss stopped training (the last good checkpoint stays)."""
    return run_training_cli(train, argv, prog="train")
