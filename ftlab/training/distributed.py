"""Run the same `fit` on several processes, data parallel, under `torchrun` or `accelerate launch`.

Taught in lesson 06. Each process holds a full copy of the model and trains on its own slice
of every global batch; after each backward the gradients are averaged across processes (DDP),
so every copy takes the same optimizer step and the copies stay identical. Only rank 0 prints
and writes checkpoints. In a single process every function here does nothing, so `fit` reads
the same either way:

    torchrun --nproc_per_node 2 train.py                  # CPU (gloo) or GPUs (nccl)
    accelerate launch --num_processes 2 train.py          # GPUs

Without a GPU, Accelerate must be told to use the CPU (`Accelerator(cpu=True)`, which
`prepare` does), otherwise each process silently trains alone; and `accelerate launch --cpu
--num_processes 2` starts a single process, so use `torchrun` on CPUs.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
from torch import nn

_accelerator = None  # set by prepare() when launched on several processes


def world_size() -> int:
    """Return how many processes the launcher started (1 when run plainly). Taught in lesson 06."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """Return this process's rank, 0 to world_size() - 1. Taught in lesson 06."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """Return True when started by torchrun or accelerate launch with several processes."""
    return world_size() > 1


def is_main_process() -> bool:
    """Return True on rank 0, the one process that prints and writes files. Taught in lesson 06."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Return this process's device: cuda:<local rank> under a launcher, else `device`."""
    if is_distributed() and torch.device(device).type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def prepare(model: nn.Module, train_dl, val_dl=None, device=None):
    """Return (model, train_dl, val_dl) ready for this process. Taught in lesson 06.

    Launched on several processes: wrap the model in DistributedDataParallel and give each
    process its share of every loader's batches (CPU processes talk through gloo, GPUs through
    nccl). In a single process: return them unchanged.
    """
    global _accelerator
    if not is_distributed():
        return model, train_dl, val_dl
    from accelerate import Accelerator

    use_cpu = device is None and not torch.cuda.is_available()
    use_cpu = use_cpu or (device is not None and torch.device(device).type == "cpu")
    # fit does its own autocast; Accelerate only places, wraps and shards.
    _accelerator = Accelerator(cpu=use_cpu, mixed_precision="no")
    loaders = [dl for dl in (train_dl, val_dl) if dl is not None]
    model, *loaders = _accelerator.prepare(model, *loaders)
    return model, loaders[0], (loaders[1] if val_dl is not None else None)


def unwrap(model: nn.Module) -> nn.Module:
    """Return the model inside its DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def sync_gradients(model: nn.Module, sync: bool):
    """Return a context that skips the gradient all-reduce when `sync` is False.

    Taught in lesson 06. With gradient accumulation only the last micro-batch before an
    optimizer step needs the (slow) exchange; the others accumulate locally.
    """
    ddp = getattr(model, "_orig_mod", model)  # DDP inside torch.compile
    if sync or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()


def gather(dl, *tensors: torch.Tensor | None):
    """Concatenate each tensor of one batch of `dl` across processes; None stays None.

    Taught in lesson 06: evaluation on a loader that `prepare` sharded gathers each batch's
    logits and labels (dropping the duplicates that even out the last batch), then computes
    metrics over the whole set. Any other loader, or a single process: tensors unchanged.
    """
    if is_sharded(dl):
        tensors = tuple(
            _accelerator.gather_for_metrics(t) if t is not None else None for t in tensors
        )
    return tensors if len(tensors) > 1 else tensors[0]


def is_sharded(dl) -> bool:
    """Return True for a loader that `prepare` split across processes."""
    if _accelerator is None or not is_distributed():
        return False
    from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

    return isinstance(dl, (DataLoaderShard, DataLoaderDispatcher))


def mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over processes (e.g. each rank's train loss). Taught in lesson 06."""
    if _accelerator is None or not is_distributed():
        return value
    return _accelerator.reduce(value.detach().clone(), reduction="mean")


def wait_for_everyone() -> None:
    """Block until every process gets here (e.g. after rank 0 wrote a checkpoint)."""
    if _accelerator is not None and is_distributed():
        _accelerator.wait_for_everyone()


def launch_command(script: str, num_processes: int = 2, *args: str) -> list[str]:
    """Return the torchrun command that runs `script` on `num_processes` processes.

    Taught in lesson 06. `python -m torch.distributed.run` is `torchrun` without relying on
    the script being on PATH; `--standalone` picks a free port, so two runs never collide.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*runner, "--nproc_per_node", str(num_processes), script, *args]
