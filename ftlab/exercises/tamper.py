"""Evidence of tampering, gathered in a student's kernel and checked by the grader.

`signs` lists what student code replaced that an honest kernel keeps (builtins, stdout, torch's
comparison functions, loss functions); `code_digests` hashes ftlab's grading modules as loaded,
which the grader compares with its own. Both travel with every reply of `ftlab.exercises.serve`.
A kernel that forges these gains nothing: the grader still judges only the data it gets back.
Course tooling.
"""

from __future__ import annotations

import builtins
import hashlib
import sys


def signs(state: dict) -> list[str]:
    """What student code changed that grading relies on: builtins, stdout, torch comparisons."""
    signs = [
        f"builtins.{name} was replaced"
        for name, original in state.get("builtins", {}).items()
        if getattr(builtins, name, None) is not original
    ]
    if "stdout" in state and sys.stdout is not state["stdout"]:
        signs.append("sys.stdout was replaced")
    torch = sys.modules.get("torch")
    if torch is not None:
        signs += _torch_signs(torch)
    return signs


def _torch_signs(torch) -> list[str]:
    names = ("allclose", "isclose", "equal", "isfinite", "eq", "abs", "max", "where")
    signs = [
        f"torch.{name} was replaced"
        for name in names
        if type(getattr(torch, name, None)).__name__ != "builtin_function_or_method"
    ]
    for name in ("__eq__", "allclose", "item", "tolist", "__float__"):
        kind = type(vars(torch.Tensor).get(name) or getattr(torch._C.TensorBase, name, None))
        if kind.__name__ not in ("method_descriptor", "wrapper_descriptor", "function"):
            signs.append(f"torch.Tensor.{name} was replaced")
        elif kind.__name__ == "function" and "torch" not in getattr(
            getattr(torch.Tensor, name), "__module__", ""
        ):
            signs.append(f"torch.Tensor.{name} was replaced")
    functional = sys.modules.get("torch.nn.functional")
    for name in ("cross_entropy", "nll_loss", "softmax", "log_softmax"):
        found = getattr(functional, name, None) if functional else None
        if found is not None and getattr(found, "__module__", "") != "torch.nn.functional":
            signs.append(f"torch.nn.functional.{name} was replaced")
    return signs


def code_digests() -> dict[str, str]:
    """A digest of the functions of each loaded `ftlab.exercises` module (to spot patching)."""
    return {
        name: module_digest(module)
        for name, module in sorted(sys.modules.items())
        if name.startswith("ftlab.exercises") and module is not None
    }


def module_digest(module) -> str:
    """Hash of what the module's names point to: ftlab's own code in full, others by name."""
    parts = []
    for name, value in sorted(vars(module).items()):
        if isinstance(value, type) and value.__module__.startswith("ftlab"):
            members = sorted((f"{name}.{k}", v) for k, v in vars(value).items())
        else:
            members = [(name, value)]
        for label, item in members:
            code = getattr(item, "__code__", None)
            origin = f"{getattr(item, '__module__', '')}.{getattr(item, '__qualname__', '')}"
            if code is not None and str(getattr(item, "__module__", "")).startswith("ftlab"):
                parts.append(f"{label}:{origin}:{_code_text(code)}")
            elif callable(item):
                parts.append(f"{label}:{origin}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _code_text(code) -> str:
    consts = [
        _code_text(c)
        if hasattr(c, "co_code")
        else repr(sorted(map(repr, c)))
        if isinstance(c, frozenset)
        else repr(c)
        for c in code.co_consts
    ]
    return f"{code.co_code.hex()}{code.co_names}{consts}"
