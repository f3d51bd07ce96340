"""What a training config is checked for before torch, Lightning or a model loads: its data
(``datamodules.checks``: paths, shard patterns, ``prepare`` outputs, buckets) and a trainer
this machine can run (its CUDA GPUs, DeepSpeed's precision and install). ``check_config``
runs them all, in a second or two, so a mistake is told in one line before the run folder
is made (``ldm_ext.training``, ``ldm_ext.fit``). Part of the training application
(``ldm_ext.commands.APPLICATIONS``); imports nothing heavy.
"""
from __future__ import annotations

import importlib.util

from datamodules.checks import check_data_paths, check_data_store
from ldm_ext import devices
from ldm_ext.config import ConfigError


def check_trainer(cfg) -> None:
    """Trainer settings that cannot work here (DeepSpeed with fp16, GPUs on a machine
    without CUDA, fp16 frozen weights on a CPU, DeepSpeed not installed), found without
    importing torch where this machine plainly has no GPU (``ldm_ext.devices``) and without
    loading Lightning."""
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
        found, needed = devices.cuda_device_count(), max(t.devices, 1)
        if found < needed:
            seen = f"{found} are visible" if found else "none is visible"
            raise ConfigError(
                f"trainer.strategy={t.strategy} / trainer.accelerator={t.accelerator} / "
                f"trainer.devices={t.devices} needs {needed} CUDA GPU(s) and {seen}; use "
                "trainer.accelerator=cpu (CPU processes), fewer trainer.devices, or --config "
                "with trainer: cpu on this machine")
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not devices.cuda_device_count())
    if on_cpu and cfg.model.weight_dtype == "fp16":  # a CPU has bf16 kernels, not fp16 ones
        raise ConfigError(
            "model.weight_dtype=fp16 on the CPU: a CPU has no fp16 convolution kernels, so "
            "its fp16 path is orders of magnitude slower than fp32; use "
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
