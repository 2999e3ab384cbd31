"""Batches as `fit` sees them: a dict with "labels" or an (inputs, labels) pair.

Taught in lesson 02, whose hand-written loop moves each batch to the device; `fit` also splits a
batch that ran out of memory into slices (`split_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def to_device(batch, device):
    """Move every tensor of a batch (dict, tuple or list) to `device`. Taught in lesson 02."""
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    return batch


def split_batch(batch, parts: int):
    """Yield (chunk, weight) pairs: `parts` slices along the batch axis, weight = share of rows."""
    size = batch_size(batch)
    if parts == 1:
        yield batch, 1.0
        return
    for start in range(0, size, math.ceil(size / parts)):
        stop = min(size, start + math.ceil(size / parts))
        yield slice_batch(batch, start, stop), (stop - start) / size


def slice_batch(batch, start: int, stop: int):
    """Rows start:stop of every tensor in a batch."""
    if isinstance(batch, Mapping):
        return {key: slice_batch(value, start, stop) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(value, start, stop) for value in batch)
    return batch[start:stop] if torch.is_tensor(batch) else batch


def batch_size(batch) -> int:
    """The number of examples in a batch (its labels, or its first tensor's rows)."""
    if isinstance(batch, Mapping):
        return len(batch["labels"]) if "labels" in batch else len(next(iter(batch.values())))
    return len(unpack(batch)[1])


def unpack(batch):
    """Return an (inputs, labels) batch as it is; anything else gets a clear TypeError."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"expected a batch as a dict with 'labels' or an (inputs, labels) pair, got "
            f"{type(batch).__name__}; return (x, y) from the dataset or use a dict collate_fn"
        )
    return batch
