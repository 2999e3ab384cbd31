"""Tools for writing checks: fetch an answer, call a student's function, compare with a reference.

Every failure raises `Wrong` with a message a student can act on. Course tooling.
"""

from __future__ import annotations

import math
import numbers
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftlab.exercises.checks import Unanswered, Wrong

_LIBRARY_MARKERS = ("site-packages", "dist-packages", "/lib/python", str(Path(__file__).parents[1]))


def answer(namespace: dict, name: str, kind: str = "any") -> Any:
    """Return the student's `name`; kind is "any", "function", "class", "number" or "accuracy".

    An "accuracy" is a number between 0 and 1.
    """
    if name not in namespace:
        raise Unanswered(
            f"`{name}` is not defined: run the cell that defines it "
            "(the exercise asks for exactly this name)"
        )
    value = namespace[name]
    if value is Ellipsis:
        raise Unanswered(f"`{name}` is still `...`: fill in your answer")
    if kind == "function" and not callable(value):
        raise Wrong(f"`{name}` should be a function, but it is a {type(value).__name__}")
    if kind == "class" and not isinstance(value, type):
        raise Wrong(f"`{name}` should be a class, but it is a {type(value).__name__}")
    if kind in ("number", "accuracy"):
        value = as_number(value, f"`{name}`")
    if kind == "accuracy" and not 0 <= value <= 1:
        raise Wrong(f"an accuracy is between 0 and 1; {name} is {value:g}")
    return value


def as_number(value: Any, what: str) -> float:
    """Return `value` as a float, or raise Wrong saying that `what` should be a finite number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise Wrong(f"{what} should be a number, but it is {value!r}")
    if not math.isfinite(value):
        raise Wrong(f"{what} should be a finite number, but it is {value!r}")
    return float(value)


def call(function: Callable, *args: Any, what: str = "", **kwargs: Any) -> Any:
    """Call a student's function; turn NotImplementedError and crashes into clear messages."""
    what = what or f"{getattr(function, '__name__', 'your function')}(...)"
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise Unanswered(
            f"`{what}` still raises NotImplementedError: replace `# YOUR CODE HERE` and "
            "`raise NotImplementedError()` with your code, then run that cell again"
        ) from None
    except Wrong:
        raise
    except Exception as error:
        raise Wrong(f"`{what}` raised {type(error).__name__}: {error}{_where(error)}") from None


def close(actual: Any, expected: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    """Require a tensor equal to `expected` within `atol`, naming shape, NaN or the difference."""
    if not isinstance(actual, torch.Tensor):
        raise Wrong(f"{what} should be a tensor, but it is a {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise Wrong(
            f"{what} has shape {tuple(actual.shape)} but should have {tuple(expected.shape)}"
        )
    actual = actual.detach().double()
    expected = expected.detach().double()
    if not torch.isfinite(actual).all():
        raise Wrong(f"{what} contains inf or nan where the right answer is finite")
    difference = (actual - expected).abs().max().item()
    if difference > atol:
        raise Wrong(f"{what} differs from the reference by {difference:.3g}")


def count(items: list[str], singular: str) -> str:
    """Return "3 parameters (a, b, c)" for a list of names, with at most three shown."""
    shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
    plural = singular if len(items) == 1 else f"{singular}s"
    return f"{len(items)} {plural} ({shown})"


def are(items: list) -> str:
    """Return "is" for one item and "are" for several, to follow `count`."""
    return "is" if len(items) == 1 else "are"


@contextmanager
def forbidden(module: Any, name: str, advice: str):
    """Make `module.name` raise Wrong(advice) in the block, e.g. to require a hand-written loss."""
    original = getattr(module, name)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Wrong(advice)

    setattr(module, name, refuse)
    try:
        yield
    finally:
        setattr(module, name, original)


def tiny_bert(num_labels: int = 2, num_layers: int = 2, seed: int = 0) -> nn.Module:
    """Return a tiny random-init BertForSequenceClassification (hidden 16), without dropout."""
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging

    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return BertForSequenceClassification(config)
    finally:
        logging.set_verbosity(verbosity)


class TinyCNN(nn.Module):
    """A small CNN with BatchNorm: a `backbone` and an `fc` head, shaped like a mini ResNet."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (batch, 16)
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))  # (batch, num_classes)


def _where(error: BaseException) -> str:
    # Point at the deepest line of the student's own code in the traceback.
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not any(marker in frame.filename for marker in _LIBRARY_MARKERS)
    ]
    if not frames or not frames[-1].line:
        return ""
    return f" (in your line `{frames[-1].line.strip()}`)"
