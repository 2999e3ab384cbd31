"""Classification metrics in plain torch: accuracy, macro-F1, confusion matrix; the noise rule.

No scikit-learn at runtime; the tests check these against it. Taught in lesson 02.
Every metric accepts either predicted class ids `(n,)` or logits `(n, num_classes)`.
`within_noise`, lesson 04's rule for comparing runs over seeds, is used by lesson 06 as well.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch


def accuracy(logits_or_preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the fraction of predictions equal to the labels. Taught in lesson 02."""
    preds = as_preds(logits_or_preds, labels)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined: got 0 labels")
    return (preds == labels).float().mean().item()


def confusion_matrix(
    logits_or_preds: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> torch.Tensor:
    """Return the (num_classes, num_classes) count matrix: row = true class, column = predicted.

    Taught in lesson 02.
    """
    preds = as_preds(logits_or_preds, labels).long().cpu()
    labels = labels.long().cpu()
    if num_classes is None:
        num_classes = int(max(preds.max(), labels.max())) + 1 if len(labels) else 0
    if len(labels) and (
        min(preds.min(), labels.min()) < 0 or max(preds.max(), labels.max()) >= num_classes
    ):
        raise ValueError(f"class ids must lie in [0, {num_classes}); raise num_classes")
    flat = labels * num_classes + preds  # (n,) one cell index per sample
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def macro_f1(
    logits_or_preds: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> float:
    """Return the unweighted mean of the per-class F1 scores. Taught in lesson 02.

    With `num_classes=None` the mean runs over the classes that occur in the labels or the
    predictions (scikit-learn's default); with `num_classes` over all of them, an absent class
    counting as F1 = 0.
    """
    cm = confusion_matrix(logits_or_preds, labels, num_classes).double()
    true_positives = cm.diag()
    support = cm.sum(dim=1)  # how often each class is the label
    predicted = cm.sum(dim=0)  # how often each class is predicted
    denominator = support + predicted  # 2·tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * true_positives / denominator.clamp(min=1), 0.0)
    present = denominator > 0 if num_classes is None else torch.ones_like(f1, dtype=torch.bool)
    return f1[present].mean().item() if present.any() else 0.0


def within_noise(scores: Sequence[float], other_scores: Sequence[float]) -> bool:
    """Whether two means over seeds differ by at most twice the larger standard deviation.

    Taught in lesson 04. `scores`, `other_scores`: one value per seed (at least 2 each), such as
    accuracies or losses. Within the noise is "these seeds cannot tell them apart", not "as
    good": a strategy whose seeds disagree widely is within the noise of more strategies.
    """
    if min(len(scores), len(other_scores)) < 2:
        raise ValueError(
            f"within_noise needs at least 2 seeds per side to know the noise; got "
            f"{len(scores)} and {len(other_scores)}: run more seeds"
        )
    noise = max(statistics.stdev(scores), statistics.stdev(other_scores))
    return abs(statistics.mean(scores) - statistics.mean(other_scores)) <= 2 * noise


def as_preds(logits_or_preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Turn logits (n, num_classes) into class ids (n,); leave class ids alone."""
    if logits_or_preds.ndim == labels.ndim + 1:
        return logits_or_preds.argmax(dim=-1)
    if logits_or_preds.shape != labels.shape:
        raise ValueError(
            f"predictions of shape {tuple(logits_or_preds.shape)} do not match labels of shape "
            f"{tuple(labels.shape)}; pass logits (n, num_classes) or class ids (n,)"
        )
    return logits_or_preds


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
}


def get_metric(metric: str | Callable) -> tuple[str, Callable]:
    """Return (name, function) for a metric name from METRICS or a callable(logits, labels)."""
    if callable(metric):
        return metric.__name__, metric
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {sorted(METRICS)} or a function")
    return metric, METRICS[metric]
