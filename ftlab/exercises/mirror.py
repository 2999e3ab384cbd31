"""The grader's models, mirrored in a student's kernel: built from a recipe, synced as flags.

A check hands a student's function a model it built with a registered builder (`tiny_bert`,
`tiny_cnn`, ...). Across the channel the model travels as its recipe plus its `requires_grad`
flags and train/eval modes; the kernel builds its own copy and reports the copy's fingerprint,
which must equal the grader's (else torch or ftlab was patched: "tampered"). After the call the
kernel sends back the flags, modes and the submodules the function replaced; the grader applies
them to its own copy and judges that. Weights never come back. Course tooling.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any

from ftlab.exercises.wire import Tampered

BUILDERS: dict[str, Callable] = {}
SPEC = "_ftlab_recipe"


def builder(function: Callable) -> Callable:
    """Register a model builder (keyword arguments only); its models remember their recipe."""

    @functools.wraps(function)
    def build(**kwargs: Any):
        model = function(**kwargs)
        object.__setattr__(model, SPEC, [function.__name__, kwargs])
        return model

    BUILDERS[function.__name__] = build
    return build


def describe(model) -> dict:
    """The grader's model as it crosses: recipe, flags, modes and fingerprint."""
    recipe = getattr(model, SPEC, None)
    if recipe is None:
        raise TypeError(f"a {type(model).__name__} built without a registered builder")
    return {"recipe": recipe, **flags(model), "print": fingerprint(model)}


def sent_models(values: list) -> dict[str, Any]:
    """The models among a call's arguments that the grader built ("arg0", "arg1", ...)."""
    found = [value for value in values if getattr(value, SPEC, None) is not None]
    return {f"arg{i}": model for i, model in enumerate(found)}


def rebuild(data: dict):
    """In the kernel: build the grader's model from its description and set its flags."""
    name, kwargs = data["recipe"]
    model = BUILDERS[name](**kwargs)
    set_flags(model, data)
    return model


def flags(model) -> dict:
    """Which parameters require grad and which modules are in train mode."""
    return {
        "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
        "training": [n for n, m in model.named_modules() if m.training],
    }


def set_flags(model, data: dict) -> None:
    """Apply `flags` output to a model (names it does not have are ignored)."""
    trainable, training = set(data["trainable"]), set(data["training"])
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    for name, module in model.named_modules():
        module.training = name in training


def fingerprint(model) -> list:
    """Names, shapes and two sums of the weights: equal for equal builds."""
    names = "|".join(f"{n}{tuple(p.shape)}" for n, p in model.named_parameters())
    total = absolute = 0.0
    for parameter in model.parameters():
        values = parameter.detach().double()
        total += float(values.sum())
        absolute += float(values.abs().sum())
    return [hashlib.sha256(names.encode()).hexdigest()[:16], total, absolute]


def same_fingerprint(mine: list, theirs: Any) -> bool:
    """True when the kernel's copy matches the grader's model."""
    if not isinstance(theirs, list) or len(theirs) != 3 or theirs[0] != mine[0]:
        return False
    return all(
        isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
        for a, b in zip(mine[1:], theirs[1:], strict=True)
    )


def module_ids(model) -> dict[str, int]:
    """Each submodule's identity, to see afterwards which ones a function replaced."""
    return {name: id(module) for name, module in model.named_modules()}


def after_call(model, before: dict[str, int]) -> dict:
    """In the kernel after the call: flags, modes and descriptions of replaced submodules."""
    replaced = {}
    for name, module in model.named_modules():
        if name and before.get(name) != id(module):
            if not any(name.startswith(f"{done}.") for done in replaced):
                replaced[name] = _describe_module(module)
    return {**flags(model), "replaced": replaced}


def apply_after(model, data: Any) -> None:
    """In the grader: apply the kernel's `after_call` report to the grader's copy."""
    if not isinstance(data, dict) or not {"trainable", "training", "replaced"} <= set(data):
        raise Tampered("a model's state in the kernel's reply is malformed")
    for name, description in sorted(data["replaced"].items(), key=lambda item: len(item[0])):
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
        except AttributeError:
            continue
        setattr(parent, child, _module_from(description))
    set_flags(model, data)


def references(models: dict[str, Any]) -> dict[int, str]:
    """id -> reference of each model ("arg0") and each of its parameters ("arg0:fc.weight")."""
    refs = {}
    for key, model in models.items():
        refs[id(model)] = key
        for name, parameter in model.named_parameters():
            refs.setdefault(id(parameter), f"{key}:{name}")
    return refs


def objects(models: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `references`, on the grader's side."""
    found = {}
    for key, model in models.items():
        found[key] = model
        for name, parameter in model.named_parameters():
            found.setdefault(f"{key}:{name}", parameter)
    return found


def _describe_module(module) -> dict:
    from torch import nn

    if type(module) is nn.Linear:
        return {"Linear": [module.in_features, module.out_features, module.bias is not None]}
    return {"type": type(module).__name__[:60]}


def _module_from(description: Any):
    from torch import nn

    if isinstance(description, dict) and "Linear" in description:
        inputs, outputs, bias = description["Linear"]
        if not all(isinstance(v, int) and 0 < v < 1 << 20 for v in (inputs, outputs)):
            raise Tampered("a replaced layer in the kernel's reply is malformed")
        return nn.Linear(inputs, outputs, bias=bool(bias))
    name = str(description.get("type", "Module")) if isinstance(description, dict) else "Module"
    from ftlab.exercises.wire import _name

    return type(_name(name), (nn.Module,), {})()
