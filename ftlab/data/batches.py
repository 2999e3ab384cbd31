"""Batches as `fit` sees them: a dict with "labels" or an (inputs, labels) pair.

The one definition of a batch: every part of ftlab that moves, splits, copies or unpacks a
batch does it through the functions here.

Taught in lesson 02, whose hand-written loop moves each batch to the device; `fit` also splits a
batch that ran out of memory into slices (`split_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def to_device(batch, device):
    """Move every tensor of a batch (dict, tuple or list) to `device`. Taught in lesson 02."""
    return map_tensors(batch, lambda tensor: tensor.to(device, non_blocking=True))


def map_tensors(batch, function):
    """Apply `function` to every tensor of a batch, keeping its shape: dict, tuple or list."""
    if isinstance(batch, Mapping):
        return {key: map_tensors(value, function) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(value, function) for value in batch)
    return function(batch) if torch.is_tensor(batch) else batch


def inputs_and_labels(batch):
    """Split a batch into what the model reads and its labels (None for unlabelled inputs).

    A dict batch gives (the dict without "labels", its labels); an (inputs, labels) pair gives
    both; anything else is taken as unlabelled inputs.
    """
    if isinstance(batch, Mapping):
        return {key: value for key, value in batch.items() if key != "labels"}, batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def labels_of(batch):
    """A batch's labels, or None when it has none."""
    return inputs_and_labels(batch)[1]


def copy_into(static, batch) -> None:
    """Copy a batch's tensors into same-shaped tensors `static` (a recorded step's inputs)."""
    if isinstance(batch, Mapping):
        static, batch = static.values(), batch.values()
    for destination, value in zip(static, batch, strict=True):
        destination.copy_(value, non_blocking=True)


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
    return map_tensors(batch, lambda tensor: tensor[start:stop])


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
