"""Tools for writing checks: fetch an answer, call a student's function, compare with a reference.

Every failure raises `Wrong` with a message a student can act on. A check works the same on a
notebook's own globals (the self-check) and on `ftlab.exercises.remote.RemoteNamespace` (the
grader): `call` runs the student's function where it lives and returns plain data, models handed
to it are built with a registered builder (`tiny_bert`, `tiny_cnn`, `resnet18`), and facts
about live objects come from a registered probe (`collect`). Course tooling.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ftlab.exercises import mirror, remote, serve, wire
from ftlab.exercises.checks import Unanswered, Wrong


def answer(namespace: dict, name: str, kind: str = "any") -> Any:
    """Return the student's `name`; kind is "any", "function", "class", "number" or "accuracy".

    An "accuracy" is a number between 0 and 1.
    """
    first, *attributes = name.split(".")
    if first not in namespace:
        raise Unanswered(
            f"`{first}` is not defined: run the cell that defines it "
            "(the exercise asks for exactly this name)"
        )
    value = _look_up(namespace, name)
    if value is Ellipsis:
        raise Unanswered(f"`{name}` is still `...`: fill in your answer")
    if kind == "function" and not callable(value):
        raise Wrong(f"`{name}` should be a function, but it is a {type(value).__name__}")
    if kind == "class" and not (isinstance(value, type) or getattr(value, "kind", "") == "class"):
        raise Wrong(f"`{name}` should be a class, but it is a {type(value).__name__}")
    if kind in ("number", "accuracy"):
        value = as_number(value, f"`{name}`")
    if kind == "accuracy" and not 0 <= value <= 1:
        raise Wrong(f"an accuracy is between 0 and 1; {name} is {value:g}")
    return value


def live(namespace, name: str) -> Any:
    """The student's `name` as a probe receives it: the object itself, where their code runs.

    For values that are not plain data (a config object, say), which a look-up only describes.
    """
    value = answer(namespace, name)
    if isinstance(namespace, remote.RemoteNamespace):
        return remote.RemoteCallable(namespace.channel, name, "object", type(value).__name__)
    return value


def _look_up(namespace, name: str) -> Any:
    # "config.num_labels": the grader's namespace reads attributes in the kernel.
    if isinstance(namespace, remote.RemoteNamespace) or "." not in name:
        try:
            return namespace[name]
        except KeyError:
            raise Unanswered(f"`{name}` is not defined: run the cell that defines it") from None
    first, *attributes = name.split(".")
    value = namespace[first]
    for attribute in attributes:
        if not hasattr(value, attribute):
            raise Wrong(f"`{first}` has no attribute `{attribute}`")
        value = getattr(value, attribute)
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


def call(function: Callable, *args: Any, what: str = "", forbid=(), **kwargs: Any) -> Any:
    """Call a student's function; turn NotImplementedError and crashes into clear messages.

    `forbid` lists ("module[:Class]", "name", advice): library functions that raise `Wrong`
    with the advice while the student's code runs, e.g. to require a hand-written loss.
    """
    what = what or f"{getattr(function, '__name__', 'your function')}(...)"
    try:
        return _run(function, args, kwargs, forbid)
    except remote.StudentRaised as error:
        raise _as_wrong(error, what) from None
    except remote.TimedOut:
        raise Wrong(f"`{what}` ran past the time limit and was interrupted") from None


def attempt(function: Callable, *args: Any, **kwargs: Any) -> remote.StudentRaised | None:
    """Call a student's function for its error: return what it raised, or None."""
    try:
        _run(function, args, kwargs, ())
    except remote.StudentRaised as error:
        return error
    return None


def collect(namespace, collector: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run a registered probe on these arguments where the student's objects live; its facts."""
    name = f"{collector.__module__}.{collector.__name__}"
    try:
        if isinstance(namespace, remote.RemoteNamespace):
            handle = remote.RemoteCallable(namespace.channel, name, "probe", "")
            reply, models = handle.request(args, kwargs, probe=name)
            return remote.unpack(reply, models)
        reply = serve.invoke(collector, list(args), kwargs, probe=True)
        return remote.unpack(remote.local_reply(reply), _models(args, kwargs), apply=False)
    except remote.StudentRaised as error:
        raise _as_wrong(error, "the check") from None
    except remote.TimedOut:
        raise Wrong("your code ran past the time limit and was interrupted") from None


def _run(function: Callable, args: tuple, kwargs: dict, forbid) -> Any:
    if isinstance(function, remote.RemoteCallable):
        reply, models = function.request(args, kwargs, forbid)
        return remote.unpack(reply, models)
    if serve.inside_invoke():  # a probe calling the student's code, in the kernel: live objects
        reply = serve.invoke(function, list(args), kwargs, forbid, live=True)
        if "raised" in reply:
            raise remote.StudentRaised(reply["raised"])
        return reply["live"]
    reply = serve.invoke(function, list(args), kwargs, forbid)
    return remote.unpack(remote.local_reply(reply), _models(args, kwargs), apply=False)


def _models(args: tuple, kwargs: dict) -> dict:
    return mirror.sent_models([*args, *kwargs.values()])


def _as_wrong(error: remote.StudentRaised, what: str) -> Wrong:
    if error.not_implemented:
        return Unanswered(
            f"`{what}` still raises NotImplementedError: replace `# YOUR CODE HERE` and "
            "`raise NotImplementedError()` with your code, then run that cell again"
        )
    if error.unanswered:
        return Unanswered(error.message)
    if error.wrong:
        return Wrong(error.message)
    return Wrong(f"`{what}` raised {error.type}: {error.message}{error.where}".replace(": (", " ("))


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


@mirror.builder
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


@mirror.builder
def tiny_cnn(num_classes: int = 3, seed: int = 0) -> nn.Module:
    """Return a TinyCNN initialised from `seed`."""
    torch.manual_seed(seed)
    return TinyCNN(num_classes)


@mirror.builder
def resnet18(seed: int = 0) -> nn.Module:
    """Return a random-init torchvision ResNet-18 (no download) initialised from `seed`."""
    from torchvision.models import resnet18 as build

    torch.manual_seed(seed)
    return build(weights=None)


@serve.probe
def module_facts(module: Any) -> dict:
    """Facts about a student's model: its type, length, and each parameter's flag and size."""
    if not isinstance(module, nn.Module):
        return {"type": type(module).__name__, "length": None, "parameters": []}
    parameters = [[n, p.requires_grad, p.numel()] for n, p in module.named_parameters()]
    length = len(module) if isinstance(module, nn.Sequential) else None
    return {"type": type(module).__name__, "length": length, "parameters": parameters}


def verify(model: nn.Module, reported: Any) -> None:
    """Raise Tampered unless the kernel's copy of a model the check built matches the grader's."""
    if not mirror.same_fingerprint(mirror.fingerprint(model), reported):
        raise wire.Tampered("the kernel built a different model from the grader's recipe")
