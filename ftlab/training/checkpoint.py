"""Checkpoints that survive a disconnect, and an exact resume.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the random
number generators (Python, NumPy, torch, CUDA), the epoch, the optimizer step, how many batches
of the epoch were used, and the seed of the data order. `fit` shuffles epoch `e` with a
generator seeded `data_seed + e`, so a resumed run draws the same order and skips the batches
already used: on the CPU with a fixed seed it ends with bitwise the same weights as a run that
was never interrupted (with `num_workers > 0`, random augmentations in the workers may differ).

Files are written to a temporary file in the same folder and renamed over the target
(`os.replace`), so a run killed mid-write leaves the previous checkpoint intact. Only plain
files, no symlinks: the folder may be a mounted Google Drive folder in Colab.
Taught in lesson 02.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ftlab.training import distributed

PREFIX, SUFFIX = "checkpoint-", ".pt"


def save(checkpoint_dir, state, keep_last: int = 2, epoch_done: bool = False) -> Path | None:
    """Write the training state to checkpoint-<step>.pt and keep the newest `keep_last` files.

    Taught in lesson 02. With several processes only rank 0 writes (and returns the path).
    """
    if not distributed.is_main_process():
        return None
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "epoch": state.epoch + 1 if epoch_done else state.epoch,  # where a resume starts
        "batch_in_epoch": 0 if epoch_done else state.batch_in_epoch,
        "step": state.step,
        "data_seed": state.data_seed,
        "batch_splits": state.batch_splits,
        "model": distributed.unwrap(state.model).state_dict(),  # no DDP/compile prefixes
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "history": state.history.to_dict(),
        "callbacks": [
            (type(callback).__name__, callback.state_dict())
            for callback in state.callbacks
            if hasattr(callback, "state_dict")
        ],
        "rng": rng_states(),
    }
    path = folder / f"{PREFIX}{state.step:08d}{SUFFIX}"
    atomic_save(payload, path)
    for old in list_checkpoints(folder)[:-keep_last] if keep_last else []:
        old.unlink(missing_ok=True)
    return path


def resume(checkpoint_dir, state, verbose: bool = True) -> Path | None:
    """Load the newest checkpoint in `checkpoint_dir` into `state`; return its path, or None.

    Taught in lesson 02.
    """
    found = list_checkpoints(checkpoint_dir)
    if not found:
        return None
    saved = torch.load(found[-1], map_location="cpu", weights_only=False)
    distributed.unwrap(state.model).load_state_dict(saved["model"])
    _check_param_groups(state.optimizer, saved["optimizer"], found[-1])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    state.history = type(state.history).from_dict(saved["history"])
    _load_callbacks(state.callbacks, saved["callbacks"])
    for key in ("epoch", "batch_in_epoch", "step", "data_seed", "batch_splits"):
        setattr(state, key, saved[key])
    set_rng_states(saved["rng"])
    if verbose:
        print(f"Resuming from {found[-1]} (epoch {state.epoch + 1}, step {state.step})")
    return found[-1]


def list_checkpoints(checkpoint_dir) -> list[Path]:
    """Return the checkpoint files in `checkpoint_dir`, oldest step first."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{PREFIX}*{SUFFIX}"))  # zero-padded steps sort as numbers


def atomic_save(payload, path) -> None:
    """torch.save to a temporary file in the same folder, then rename it over `path`."""
    atomic_write(path, lambda file: torch.save(payload, file))


def atomic_write(path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    A reader, or a run killed mid-write, sees the old file or the new one, never half of one.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it visible
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def epoch_batches(train_dl, state):
    """Iterate `train_dl` in the seeded order of `state.epoch`, skipping batches already used."""
    generator = torch.Generator().manual_seed(state.data_seed + state.epoch)
    if isinstance(train_dl, DataLoader):
        sampler = train_dl.sampler
        if hasattr(sampler, "generator"):  # RandomSampler: shuffle with our generator
            sampler.generator = generator
        train_dl.generator = generator  # worker seeds come from it, not from the global RNG
        for sampler in (train_dl.sampler, train_dl.batch_sampler):
            if hasattr(sampler, "set_epoch"):  # DistributedSampler, length-grouped batches
                sampler.set_epoch(state.epoch)
    skip = state.batch_in_epoch
    if skip == 0:
        return iter(train_dl)
    if isinstance(train_dl, DataLoader) and train_dl.batch_sampler is not None:
        return iter(_without_first_batches(train_dl, skip))  # skips indices, loads nothing
    return itertools.islice(iter(train_dl), skip, None)


def rng_states() -> dict:
    """Return the states of the Python, NumPy, torch and CUDA random number generators."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    """Restore the generators saved by `rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _SkipFirst:
    """A batch sampler that leaves out the first `skip` batches of another one."""

    def __init__(self, batch_sampler, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def _without_first_batches(train_dl: DataLoader, skip: int) -> DataLoader:
    return DataLoader(
        train_dl.dataset,
        batch_sampler=_SkipFirst(train_dl.batch_sampler, skip),
        num_workers=train_dl.num_workers,
        collate_fn=train_dl.collate_fn,
        pin_memory=train_dl.pin_memory,
        timeout=train_dl.timeout,
        worker_init_fn=train_dl.worker_init_fn,
        multiprocessing_context=train_dl.multiprocessing_context,
        generator=train_dl.generator,
        prefetch_factor=train_dl.prefetch_factor,
        persistent_workers=train_dl.persistent_workers,
    )


def _check_param_groups(optimizer, saved: dict, path) -> None:
    now, then = len(optimizer.param_groups), len(saved["param_groups"])
    if now != then:
        raise ValueError(
            f"{path} holds an optimizer with {then} parameter groups, this one has {now} "
            "(a callback such as GradualUnfreezing added groups during training). Fix: build "
            "the optimizer over all parameters from the start and pass it to fit"
        )


def _load_callbacks(callbacks, saved: list) -> None:
    """Give each callback the saved state of the first unused one of the same class."""
    saved = list(saved)
    for callback in callbacks:
        name = type(callback).__name__
        match = next((entry for entry in saved if entry[0] == name), None)
        if match is not None and hasattr(callback, "load_state_dict"):
            callback.load_state_dict(match[1])
            saved.remove(match)
