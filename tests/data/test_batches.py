"""The one definition of a batch: dict with "labels", or an (inputs, labels) pair."""

import pytest
import torch

from ftlab.data.batches import (
    batch_size,
    copy_into,
    inputs_and_labels,
    labels_of,
    map_tensors,
    slice_batch,
    unpack,
)


def test_inputs_and_labels_of_each_kind_of_batch():
    ids, labels = torch.arange(6).view(3, 2), torch.tensor([0, 1, 0])
    inputs, found = inputs_and_labels({"input_ids": ids, "labels": labels})
    assert list(inputs) == ["input_ids"] and found is labels
    assert inputs_and_labels((ids, labels)) == (ids, labels)
    assert inputs_and_labels(ids) == (ids, None)  # unlabelled inputs
    assert labels_of({"input_ids": ids}) is None and labels_of([ids, labels]) is labels


def test_map_slice_and_copy_keep_the_batch_shape():
    batch = {"input_ids": torch.arange(8).view(4, 2), "labels": torch.tensor([1, 0, 1, 1])}
    cloned = map_tensors(batch, torch.Tensor.clone)
    assert cloned["labels"] is not batch["labels"]
    assert torch.equal(cloned["labels"], batch["labels"])
    assert batch_size(slice_batch(batch, 1, 3)) == 2
    static = map_tensors(batch, torch.zeros_like)
    copy_into(static, batch)
    assert all(torch.equal(static[key], batch[key]) for key in batch)
    pair = (torch.ones(2, 3), torch.tensor([0, 1]))
    assert isinstance(slice_batch(list(pair), 0, 1), list) and batch_size(pair) == 2


def test_a_batch_of_the_wrong_shape_says_what_to_return():
    with pytest.raises(TypeError, match=r"an \(inputs, labels\) pair"):
        unpack(torch.ones(3))
