"""Evaluation: `evaluate` and `predict`, in eval mode, without gradients. Taught in lesson 02.

`fit` calls `evaluate` at the end of each epoch; under several processes `predict` gathers
every process's rows, so each one sees the whole evaluation set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ftlab.data.batches import inputs_and_labels, to_device
from ftlab.setup.env import pick_precision
from ftlab.training import distributed
from ftlab.training.metrics import get_metric

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def evaluate(model, dl, metrics=("accuracy",), device=None, precision="auto") -> dict:
    """Return {"loss": mean cross-entropy, "accuracy": ..., ...} of `model` on `dl`.

    Runs in eval mode without gradients and puts the model back in its previous mode.
    Taught in lesson 02.
    """
    logits, labels = predict(model, dl, device, precision)
    if labels is None:
        raise ValueError("evaluate needs labels in the batches; use predict for unlabelled data")
    results = {"loss": F.cross_entropy(logits, labels).item()}
    for metric in metrics:
        name, function = get_metric(metric)
        results[name] = function(logits, labels)
    return results


@torch.no_grad()
def predict(model, dl, device=None, precision="auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (logits (n, num_labels) float32 on the CPU, labels (n,) or None).

    Taught in lesson 02.
    """
    device = torch.device(device) if device is not None else device_of(model)
    precision = pick_precision(device, precision)
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        for batch in dl:
            batch = to_device(batch, device)
            with torch.autocast(device.type, AUTOCAST_DTYPES[precision], precision != "fp32"):
                logits, labels = forward_for_logits(model, batch)
            logits, labels = distributed.gather(dl, logits, labels)  # sharded: every process's rows
            all_logits.append(logits.float())  # stays on the device: one copy at the end
            if labels is not None:
                all_labels.append(labels)
    finally:
        model.train(was_training)
    if not all_logits:
        raise ValueError("the data loader is empty: nothing to predict or evaluate")
    labels = torch.cat(all_labels).cpu() if all_labels else None
    return torch.cat(all_logits).cpu(), labels


def forward_for_logits(model, batch):
    """Run the model on a batch without its labels; return (logits, labels or None)."""
    output, labels = forward_output(model, batch)
    return logits_of(output), labels


def forward_output(model, batch):
    """Run the model on a batch without its labels; return (raw output, labels or None)."""
    inputs, labels = inputs_and_labels(batch)
    return (model(**inputs) if isinstance(inputs, Mapping) else model(inputs)), labels


def logits_of(output) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, `.logits`, or a dict's "logits"."""
    if torch.is_tensor(output):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else None
    logits = logits if logits is not None else getattr(output, "logits", None)
    if logits is not None:  # Hugging Face outputs hold .logits (and are Mappings too)
        return logits
    raise TypeError(
        f"the model returned a {type(output).__name__} with no logits, so there is nothing to "
        "classify with: its forward never applies a classification head. Return logits from "
        "forward (e.g. self.classifier(pooled)), or use AutoModelForSequenceClassification"
    )


def device_of(model) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
