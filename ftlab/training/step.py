"""The two pieces of lesson 02's step that every way of running it shares: the loss, the update.

`fit`'s eager step, and the recorded steps of lesson 06, call these same functions, so a loss
or an update is computed one way only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ftlab.data.batches import unpack
from ftlab.training.evaluation import logits_of


def compute_loss(model, batch) -> torch.Tensor:
    """Return the mean loss of a batch: HF `output.loss` for dicts, cross-entropy for (x, y).

    Taught in lesson 02.
    """
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ValueError(
                f"a dict batch needs a 'labels' key to compute a loss; got {list(batch)}"
            )
        output = model(**batch)
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if loss is not None:  # Hugging Face outputs hold .loss when the batch has labels
            return loss
        return F.cross_entropy(logits_of(output), batch["labels"])
    inputs, labels = unpack(batch)
    logits = model(inputs)  # (batch, num_labels)
    return F.cross_entropy(logits_of(logits), labels)


def optimizer_step(optimizer, scaler, max_grad_norm: float | None) -> None:
    """Unscale the gradients, clip their norm to `max_grad_norm`, step. Taught in lesson 02."""
    scaler.unscale_(optimizer)  # no-op unless fp16: clipping must see the true gradients
    if max_grad_norm:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
    scaler.update()
