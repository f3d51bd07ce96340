"""Per-step training health for the logger, beside the losses the method logs and the
learning rate (Lightning's ``LearningRateMonitor``): the gradient norm, the speed and the
memory a step takes.

Logged through ``pl_module.log``, so they reach every logger (wandb, CSV) at the
Trainer's ``log_every_n_steps``.
"""
from __future__ import annotations

import time
from collections import deque

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DeepSpeedStrategy

from ldm_ext.host_memory import MemoryPeak, host_reader

HOST_READER = host_reader()  # StepMemory's CPU reading; None: nothing logged on a CPU


def total_grad_norm(parameters) -> torch.Tensor | None:
    """L2 norm of all the gradients of ``parameters`` together (None when none has one)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters
             if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None


class GradNorm(pl.Callback):
    """``train/grad_norm``: the L2 norm of the whole gradient at each optimizer step,
    before clipping (``trainer.gradient_clip_val``) and, under fp16 mixed precision, after
    unscaling, as diffusers' examples and DeepSpeed report it.

    Lightning calls ``on_before_optimizer_step`` between the unscale and the clip. Under
    DeepSpeed, ZeRO keeps the gradients in its own partitioned buffers (``param.grad`` is
    empty), so the norm is the one DeepSpeed's engine computed for its own clipping
    (``get_global_grad_norm``, unscaled, before clipping), read once the step is done.
    """

    def __init__(self) -> None:
        self.last_step = -1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            return
        norm = total_grad_norm(pl_module.parameters())
        if norm is not None:
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(trainer.strategy, DeepSpeedStrategy) or \
                trainer.global_step == self.last_step:
            return
        self.last_step = trainer.global_step
        norm = trainer.strategy.deepspeed_engine.get_global_grad_norm()
        if norm is not None:  # None before DeepSpeed's first step
            pl_module.log("train/grad_norm", float(norm), on_step=True, on_epoch=False)


class StepSpeed(pl.Callback):
    """``perf/s_per_step`` and ``perf/samples_per_s`` (all ranks' samples) over the last
    ``window`` optimizer steps.

    Wall clock between optimizer steps: data loading, forward, backward, the optimizer,
    and whatever else ran in that time (a sample grid, a checkpoint), as a researcher's
    stopwatch would count it. ``window``: the logging interval, so each logged value
    covers the steps since the last one.
    """

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.steps: deque[tuple[float, int]] = deque(maxlen=self.window)  # (seconds, samples)
        self.last_time = 0.0
        self.last_step = -1
        self.samples = 0  # this rank's, since the last optimizer step

    def on_train_start(self, trainer, pl_module) -> None:
        self.last_time, self.last_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += batch_size(batch)
        if trainer.global_step == self.last_step:  # accumulating gradients
            return
        now = time.perf_counter()
        self.steps.append((now - self.last_time, self.samples * trainer.world_size))
        self.last_time, self.last_step, self.samples = now, trainer.global_step, 0
        seconds = sum(s for s, _ in self.steps)
        values = {"perf/s_per_step": seconds / len(self.steps),
                  "perf/samples_per_s": sum(n for _, n in self.steps) / max(seconds, 1e-9)}
        pl_module.log_dict(values, on_step=True, on_epoch=False)


class StepMemory(pl.Callback):
    """``perf/step_mem_gib``: the memory a batch's forward and backward took above what the
    process held when the batch started (saved activations, gradients, their temporaries;
    not the optimizer's state or update), the most over an optimizer step's batches. It is
    the part that grows with batch size and resolution (``benchmarks/memory_plan.py``
    reads it from a full-size step). On CUDA also ``perf/peak_gpu_mem_gib``, the most GPU
    memory this process's tensors held since it started.

    CUDA: the allocator's peak since the batch started (its peak counter is reset there;
    the all-time peak is kept here). CPU: the bytes ``malloc`` holds in use (glibc's
    ``mallinfo2``; elsewhere on Linux resident plus swapped bytes), polled every 20 ms by a
    ``ldm_ext.host_memory.MemoryPeak`` thread; it counts the whole process, so it leans high.
    """

    def __init__(self) -> None:
        self.last_step, self.step_peak, self.all_time = -1, 0, 0
        self.base, self.watch = 0, None

    def on_train_start(self, trainer, pl_module) -> None:
        self.last_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            self.all_time = max(self.all_time, torch.cuda.max_memory_allocated(device))
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        elif HOST_READER is not None:
            self.watch = MemoryPeak(HOST_READER)

    def on_after_backward(self, trainer, pl_module) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            taken = torch.cuda.max_memory_allocated(device) - self.base
        elif self.watch is not None:
            taken, self.watch = self.watch.stop(), None
        else:
            return
        self.step_peak = max(self.step_peak, taken)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.last_step:  # accumulating gradients
            return
        self.last_step = trainer.global_step
        values = {"perf/step_mem_gib": self.step_peak / 2**30} if self.step_peak else {}
        device = trainer.strategy.root_device
        if device.type == "cuda":
            self.all_time = max(self.all_time, torch.cuda.max_memory_allocated(device))
            values["perf/peak_gpu_mem_gib"] = self.all_time / 2**30
        self.step_peak = 0
        if values:
            pl_module.log_dict(values, on_step=True, on_epoch=False)


def batch_size(batch) -> int:
    """Samples in a training batch: its captions (every method's batch has them)."""
    return len(batch["caption"])
