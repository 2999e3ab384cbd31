"""The from-scratch pieces of lesson 01, kept for the lessons and exercise checks that reuse them.

Lesson 01 (`notebooks/01_math_of_fine_tuning.ipynb`) writes each of these in the open: a stable
cross-entropy checked against `torch.nn.functional.cross_entropy`, a finite-difference gradient
check, and the two measures of how far fine-tuning moves a network from its starting weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn


def log_softmax_from_scratch(logits: torch.Tensor) -> torch.Tensor:
    """Return log softmax over the last dimension, stable for any logits. Taught in lesson 01."""
    if not torch.is_floating_point(logits):
        raise TypeError(f"logits must be a float tensor, got {logits.dtype}; call .float() first")
    top = logits.amax(dim=-1, keepdim=True).detach()  # (..., 1); constant shift, exact maths
    shifted = logits - top  # every entry <= 0, so exp() cannot overflow
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


def cross_entropy_from_scratch(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy of (batch, num_labels) logits and (batch,) labels.

    Taught in lesson 01; equals `F.cross_entropy(logits, labels)`, even for huge logits.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, num_labels), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must be (batch,) = ({logits.shape[0]},) class indices, got shape "
            f"{tuple(labels.shape)}; pass class ids, not one-hot rows"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must be integer class ids, got {labels.dtype}; use .long()")
    num_labels = logits.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
        low, high = labels.min().item(), labels.max().item()
        raise ValueError(f"labels must lie in [0, {num_labels}), got values {low}..{high}")
    log_probs = log_softmax_from_scratch(logits)  # (batch, num_labels)
    picked = log_probs.gather(1, labels.long().unsqueeze(1)).squeeze(1)  # (batch,)
    return -picked.mean()


def numerical_gradient(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Return the central finite-difference gradient of scalar fn at x. Taught in lesson 01.

    Use float64 inputs: the error is about eps**2 plus float rounding divided by eps.
    """
    if x.dtype != torch.float64:
        raise TypeError(f"x must be float64 for a meaningful gradient check, got {x.dtype}")
    grad = torch.zeros_like(x)
    flat_x, flat_grad = x.detach().clone().view(-1), grad.view(-1)
    for i in range(flat_x.numel()):
        saved = flat_x[i].item()
        flat_x[i] = saved + eps
        upper = _scalar(fn(flat_x.view_as(x)))
        flat_x[i] = saved - eps
        lower = _scalar(fn(flat_x.view_as(x)))
        flat_x[i] = saved
        flat_grad[i] = (upper - lower) / (2 * eps)
    return grad


def parameter_distance(model: nn.Module, initial: Mapping[str, torch.Tensor]) -> float:
    """Return ||theta - theta_0||, the distance a model has moved from `initial`.

    Taught in lesson 01. `initial` is `{name: tensor}`, e.g. a copy of `model.state_dict()`.
    """
    squared = 0.0
    for name, param in _matched(model, initial):
        squared += (param.detach() - initial[name].to(param.device)).pow(2).sum().item()
    return squared**0.5


def relative_change_per_layer(
    model: nn.Module, initial: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Return ||W - W_0|| / ||W_0|| for every weight matrix (2-D or more). Taught in lesson 01."""
    changes = {}
    for name, param in _matched(model, initial):
        if param.dim() < 2:
            continue  # biases and LayerNorm scales are not weight matrices
        start = initial[name].to(param.device)
        changes[name] = ((param.detach() - start).norm() / start.norm()).item()
    return changes


def _matched(model: nn.Module, initial: Mapping[str, torch.Tensor]):
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(initial))
    if missing:
        raise KeyError(
            f"initial weights lack {missing[:3]}; copy them before training with "
            "{n: p.detach().clone() for n, p in model.named_parameters()}"
        )
    for name, param in params.items():
        if initial[name].shape != param.shape:
            raise ValueError(f"{name}: initial shape {tuple(initial[name].shape)} != {param.shape}")
        yield name, param


def _scalar(value: torch.Tensor) -> float:
    if value.numel() != 1:
        raise ValueError(f"fn must return a scalar, got shape {tuple(value.shape)}")
    return value.item()
