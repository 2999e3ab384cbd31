"""Classification metrics in plain torch: accuracy, macro-F1, confusion matrix; seed comparisons.

No scikit-learn at runtime; the tests check these against it. Taught in lesson 02.
Every metric accepts either predicted class ids `(n,)` or logits `(n, num_classes)`.
`paired_comparison` is the course's one rule for comparing two runs over the same seeds
(lessons 03, 04 and 06).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two strategies over the same seeds (see `paired_comparison`)."""

    mean_difference: float  # mean of (a - b) over seeds
    low: float  # the 95 % interval of the mean difference
    high: float
    num_seeds: int

    @property
    def verdict(self) -> str:
        """'a better', 'b better', or 'no detectable difference' (the interval holds 0)."""
        if self.low > 0:
            return "a better"
        if self.high < 0:
            return "b better"
        return "no detectable difference"

    def __str__(self) -> str:
        return (
            f"{self.mean_difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}] over "
            f"{self.num_seeds} seeds: {self.verdict}"
        )


def paired_comparison(scores_a: Sequence[float], scores_b: Sequence[float]) -> Comparison:
    """Compare two strategies run with the same seeds: the mean difference and its 95 % interval.

    Taught in lesson 04. `scores_a[i]` and `scores_b[i]` come from seed i (same data order, same
    initial head), so each difference cancels what the seed alone decides. The interval is
    mean ± t(0.975, n-1) · sd / sqrt(n) of the per-seed differences (a paired t-interval): when
    it excludes 0, the seeds say the strategies differ; when it holds 0, they cannot tell, which
    is not "as good". An 8-point gap seen on every seed is never called noise.
    """
    if len(scores_a) != len(scores_b) or len(scores_a) < 2:
        raise ValueError(
            f"paired_comparison needs the same seeds on both sides, at least 2; got "
            f"{len(scores_a)} and {len(scores_b)} scores"
        )
    differences = [a - b for a, b in zip(scores_a, scores_b, strict=True)]
    n = len(differences)
    mean = statistics.mean(differences)
    half_width = _T_975[min(n - 1, len(_T_975)) - 1] * statistics.stdev(differences) / n**0.5
    return Comparison(mean, mean - half_width, mean + half_width, n)


# Student's t quantile t(0.975, df) for df = 1..30; past 30 the last value (about 2.04) is used.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


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
