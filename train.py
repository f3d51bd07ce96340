"""Train a method: ``python train.py [--config configs/experiment/X.yaml] [key=value ...]``.

Without arguments it trains the tiny offline InstantFamily demo on CPU. Each run lives in
``<output_dir>/<name>/`` (resolved config, checkpoints, ``trainable.safetensors``,
samples, logs). Starting a run whose folder exists resumes it from its last checkpoint;
a folder made with a different model/data/method config is refused, never overwritten.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

DEFAULT_CONFIG = "configs/experiment/demo.yaml"
RESUMABLE_GROUPS = ("trainer", "logger")  # may change between a run and its resumption


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trainer.max_steps=10")
    return parser.parse_args(argv)


def preflight(cfg) -> None:
    """Checks that need no model: fail in seconds, before any weights load."""
    import torch

    from ldm_ext.config import ConfigError

    wants_gpu = cfg.trainer.accelerator == "gpu" or cfg.trainer.strategy.startswith("deepspeed")
    if wants_gpu and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.strategy} / trainer.accelerator="
            f"{cfg.trainer.accelerator} needs CUDA GPUs and none is visible; use "
            "--config with trainer: cpu or ddp (trainer.accelerator=cpu) on this machine")
    if cfg.trainer.strategy.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            raise ConfigError("DeepSpeed strategy but deepspeed is not installed: "
                              'pip install -e ".[deepspeed]"') from err


def prepare_run_dir(cfg) -> tuple[Path, Path | None]:
    """Create or reopen the run folder; return it and the checkpoint to resume from."""
    from omegaconf import OmegaConf

    from ldm_ext.config import ConfigError, to_yaml
    from ldm_ext.methods.loading import RUN_CONFIG, saved_config

    run_dir = Path(cfg.output_dir) / cfg.name
    previous = saved_config(run_dir)
    if previous is not None:
        changed = [g for g in ("model", "data", "method", "seed")
                   if OmegaConf.select(previous, g) != OmegaConf.select(cfg, g)]
        if changed:
            raise ConfigError(
                f"run folder {run_dir} exists with a different {', '.join(changed)} config; "
                "choose another name=... or delete the folder (it is never overwritten)")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_CONFIG).write_text(to_yaml(cfg))
    last = run_dir / "checkpoints" / "last.ckpt"
    return run_dir, (last if last.is_file() else None)


def build_loggers(cfg, run_dir: Path) -> list:
    """CSV always (if enabled) plus wandb: online with WANDB_API_KEY, else offline."""
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    loggers = []
    if cfg.logger.wandb:
        mode = cfg.logger.wandb_mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        loggers.append(WandbLogger(project=cfg.logger.project, name=cfg.name, id=cfg.name,
                                   save_dir=str(run_dir), mode=mode, resume="allow"))
    if cfg.logger.csv or not loggers:
        # a new version_<n>/ per (re)start: Lightning's CSV writer would clear the old file
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
    return loggers


def build_trainer(cfg, run_dir: Path):
    """Lightning Trainer with resumable checkpoints, trainable export and sample grids."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    from callbacks.checkpointing import AtomicCheckpointIO, TrainableExport
    from callbacks.data_health import SkippedSamples
    from callbacks.evaluation import build_evaluation_callback
    from callbacks.images import SampleGrid

    t = cfg.trainer
    callbacks = [
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="step{step:07d}",
                        auto_insert_metric_name=False, every_n_train_steps=t.checkpoint_every,
                        save_last=True, save_top_k=-1),
        TrainableExport(run_dir / "trainable.safetensors"),
        SampleGrid(run_dir / "samples", t.sample_every, max(cfg.method.sample_num_ids),
                   seed=cfg.seed),
        SkippedSamples(t.log_every),
    ]
    evaluation = build_evaluation_callback(cfg, run_dir)  # None unless trainer.eval_every
    if evaluation is not None:
        callbacks.append(evaluation)
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    plugins = [] if t.strategy.startswith("deepspeed") else [AtomicCheckpointIO()]
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val or None, log_every_n_steps=t.log_every,
        callbacks=callbacks, logger=build_loggers(cfg, run_dir), plugins=plugins,
        enable_progress_bar=t.progress_bar, default_root_dir=str(run_dir),
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=False)


def run(cfg) -> Path:
    """Train one configured experiment to trainer.max_steps; return the run folder."""
    preflight(cfg)
    run_dir, resume_from = prepare_run_dir(cfg)
    import pytorch_lightning as pl

    from datamodules.factory import build_datamodule
    from ldm_ext.methods.loading import build_method

    if resume_from is not None:
        print(f"resuming {run_dir} from {resume_from}", file=sys.stderr)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    method = build_method(cfg)
    method.set_gradient_checkpointing(cfg.trainer.gradient_checkpointing)
    trainer = build_trainer(cfg, run_dir)
    # frozen encoders and backbones stay in eval mode on purpose (ldm_ext/methods/base.py)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    trainer.fit(method, datamodule=datamodule, ckpt_path=resume_from)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    from ldm_ext.config import ConfigError, load_config
    from ldm_ext.methods.base import NonFiniteLossError

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
