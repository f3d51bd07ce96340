"""The Lightning strategy a trainer config asks for.

``ddp`` and the like are passed to Lightning by name. ``deepspeed`` is a
``DeepSpeedStrategy`` built here from typed config fields (ZeRO stage, optimizer offload,
bucket sizes), because the name form keeps Lightning's defaults, among them saving the
whole module, frozen backbone and encoders included, in every checkpoint. Ours keep the
trainable weights and their (sharded) optimizer state only.

Mixed precision under DeepSpeed is DeepSpeed's torch autocast: Lightning maps
``bf16-mixed`` to DeepSpeed's bf16 mode, which casts the whole module and every input to
bf16, so the methods' fp32 tensors (noise draws, face crops) meet bf16 weights and the
first step fails (seen on CPU: the face encoder's BatchNorm). With autocast the module
keeps its dtypes (trainable fp32, frozen in ``model.weight_dtype``), as under DDP, and
Lightning is told ``32-true`` (``trainer_precision``) so it casts nothing itself. DeepSpeed
scales the loss of fp16 autocast only without ZeRO: ``16-mixed`` trains unscaled here, so
small gradients can underflow; prefer ``bf16-mixed`` on GPUs that have it.

``trainer.accelerator=cpu`` runs the same ZeRO path on CPU processes over gloo (DeepSpeed's
CPU accelerator); Lightning refuses any accelerator but CUDA for DeepSpeed, so the CPU form
lifts that one check. It is how this path is tested without a GPU.

Resuming reads a checkpoint folder through DeepSpeed, whose checkpoint engine unpickles
every file in full: the folder is checked weights-only first (``weights.check_zero_folder``),
allowing only the plain classes DeepSpeed itself stores (``zero_state_classes``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, Strategy

from ldm_ext.weights import check_zero_folder, is_zero_checkpoint

AUTOCAST = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}  # precision -> DeepSpeed dtype


def trainer_precision(cfg) -> str:
    """What ``pl.Trainer(precision=...)`` gets: mixed precision under DeepSpeed is its
    autocast (``build_strategy``), so Lightning itself runs ``32-true``."""
    t = cfg.trainer
    return "32-true" if t.strategy == "deepspeed" and t.precision in AUTOCAST else t.precision


def build_strategy(cfg) -> str | Strategy:
    """What ``pl.Trainer(strategy=...)`` gets for an experiment config."""
    t = cfg.trainer
    if t.strategy != "deepspeed":
        return t.strategy
    options: dict[str, Any] = dict(
        stage=t.zero_stage, offload_optimizer=t.offload_optimizer,
        allgather_bucket_size=t.bucket_size, reduce_bucket_size=t.bucket_size,
        exclude_frozen_parameters=True,
        # Lightning would read it off the loader's batch sampler, which streamed shards lack
        logging_batch_size_per_gpu=cfg.data.batch_size)
    if t.accelerator != "cpu":
        strategy = TrainableZeroStrategy(**options)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when DeepSpeed first picks one
        devices = [torch.device("cpu", i) for i in range(t.devices)]  # (rank index)
        strategy = CPUZeroStrategy(parallel_devices=devices, process_group_backend="gloo",
                                   **options)
    if t.precision in AUTOCAST:
        strategy.config["torch_autocast"] = {"enabled": True, "dtype": AUTOCAST[t.precision]}
    return strategy


@contextmanager
def trainable_state_only(module: torch.nn.Module) -> Iterator[None]:
    """While active, ``module.state_dict()`` holds only parameters that require grad:
    DeepSpeed's ``exclude_frozen_parameters`` drops frozen parameters but keeps every
    buffer (BatchNorm statistics of frozen encoders, ...), which the weights-only
    checkpoints of the other strategies (``IdentityMethod.on_save_checkpoint``) omit too."""
    keep = {name for name, p in module.named_parameters(remove_duplicate=False)
            if p.requires_grad}

    def drop_frozen(_module, state: dict, prefix: str, _metadata) -> None:
        for key in [k for k in state if k[len(prefix):] not in keep]:
            del state[key]

    handle = module.register_state_dict_post_hook(drop_frozen)
    try:
        yield
    finally:
        handle.remove()


def zero_state_classes() -> list[type]:
    """The non-container classes DeepSpeed's ZeRO 1/2 checkpoints hold (its optimizer
    shards: the loss scaler, the stage enum, each parameter's slice of the flat buffer),
    all plain data; weights-only loading accepts these and nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


class TrainableZeroStrategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO whose checkpoints (a folder per save) hold the trainable weights,
    their optimizer shards and Lightning's loop state: nothing frozen."""

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Any = None) -> None:
        with trainable_state_only(self.lightning_module):
            super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Resume from a folder whose every step file reads weights-only (a
        ``CheckpointError`` naming the file otherwise), before DeepSpeed unpickles it."""
        if is_zero_checkpoint(checkpoint_path):
            check_zero_folder(checkpoint_path, zero_state_classes())
        return super().load_checkpoint(checkpoint_path, weights_only)


class CPUZeroStrategy(TrainableZeroStrategy):
    """The same on CPU processes: DeepSpeed's CPU accelerator with gloo. Lightning's
    ``setup_environment`` raises for any accelerator but CUDA; this skips only that check
    (the DDP setup beneath it, which starts the process group, still runs)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)
