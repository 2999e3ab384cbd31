"""Runs in a student's kernel while it is graded: execute the grader's requests, reply in data.

The grader's setup cell calls `install(globals())`; each grading step is then one cell
`__ftlab_serve__('{...}')` carrying a request with a fresh random nonce. A request looks up a
name, calls a student's function on arguments the grader chose, or runs one of the checks'
registered fact collectors (`probe`). The reply is one line, the nonce and a JSON payload, on the
stdout the kernel had before any student code ran; it holds plain data only (`ftlab.exercises
.wire`) plus the signs of tampering seen in this kernel. Nothing here decides a grade: the same
code forged by a student can only claim data, which the grader judges. `invoke` also serves
the in-process self-check `check("q1")`, so both paths share one implementation. Course tooling.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib
import json
import random
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftlab.exercises import mirror, wire

PROBES: dict[str, Callable] = {}
WATCHED_BUILTINS = ("print", "len", "isinstance", "type", "open", "__import__", "repr", "float")
_LIBRARY_MARKERS = ("site-packages", "dist-packages", "/lib/python", str(Path(__file__).parents[1]))
_state: dict[str, Any] = {}


def probe(function: Callable) -> Callable:
    """Register a fact collector: it runs in the kernel and returns plain data to judge."""
    PROBES[f"{function.__module__}.{function.__name__}"] = function
    return function


def install(namespace: dict) -> None:
    """The grader's setup cell: remember the namespace, stdout and builtins before students."""
    for name in ("ftlab.exercises.checks.tools", "ftlab.exercises.grading"):
        importlib.import_module(name)  # torch, the model builders, what exercises import
    _state.update(
        namespace=namespace,
        stdout=sys.stdout,
        builtins={name: getattr(builtins, name) for name in WATCHED_BUILTINS},
    )
    namespace["__ftlab_serve__"] = serve


def serve(request_text: str) -> None:
    """One grading step: run the request and write the one reply line."""
    request = json.loads(request_text)
    try:
        body = handle(request, _state["namespace"])
    except BaseException as error:  # noqa: BLE001 - a request must always get a reply
        body = {"failed": f"{type(error).__name__}: {error}"[:300]}
    body["signs"] = signs_of_tampering()
    body["code"] = code_digests()
    text = json.dumps(body)
    _state["stdout"].write(f"\n{request['nonce']} {text}\n")
    _state["stdout"].flush()


def handle(request: dict, namespace: dict) -> dict:
    """Answer one request: {"op": "get"|"call"|"probe", ...}."""
    op = request["op"]
    if op == "get":
        return look_up(namespace, request["name"])
    importlib.import_module("ftlab.exercises.checks.tools")  # registers the model builders
    if op == "call":
        function = resolve(namespace, request["name"])
    else:
        importlib.import_module(request["probe"].rsplit(".", 1)[0])
        function = PROBES[request["probe"]]
    args = [_argument(item, namespace) for item in request["args"]]
    kwargs = {key: _argument(item, namespace) for key, item in request["kwargs"].items()}
    return invoke(function, args, kwargs, request.get("forbid", []), probe=op == "probe")


def look_up(namespace: dict, name: str) -> dict:
    """A name's value as data, or what kind of thing it is when it cannot cross."""
    try:
        value = resolve(namespace, name)
    except (KeyError, AttributeError):
        return {"missing": True}
    if value is Ellipsis:
        return {"ellipsis": True}
    if callable(value) and not _is_data(value):
        kind = "class" if isinstance(value, type) else "function"
        return {"callable": kind, "type": type(value).__name__[:60]}
    return {"value": wire.encode(value)}


def resolve(namespace: dict, name: str) -> Any:
    """`name` or a dotted `name.attribute` in the student's namespace."""
    first, *rest = name.split(".")
    value = namespace[first]
    for attribute in rest:
        value = getattr(value, attribute)
    return value


def invoke(
    function: Callable, args: list, kwargs: dict, forbid=(), probe: bool = False, live=False
) -> dict:
    """Call a student's function (or a probe) on these arguments; describe what happened.

    With `live` (a call made by a probe, inside the kernel) the result stays a live object.
    """
    import torch

    models = mirror.sent_models([*args, *kwargs.values()])
    reply: dict[str, Any] = {"print": [mirror.fingerprint(m) for m in models.values()]}
    before = {key: mirror.module_ids(model) for key, model in models.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread handoffs cost more than they save
    outermost = not _state.get("invoking")
    _state["invoking"] = True
    try:
        with _seeded(outermost), torch.enable_grad(), _forbidden(forbid):
            result = function(*args, **kwargs)
    except BaseException as error:  # noqa: BLE001 - the student's code may raise anything
        reply["raised"] = _describe_error(error, probe)
        if isinstance(error, KeyboardInterrupt):
            raise
    else:
        if live:
            reply["live"] = result
        else:
            reply["result"] = wire.encode(result, None if probe else mirror.references(models))
    finally:
        torch.set_num_threads(threads)
        _state["invoking"] = not outermost
    reply["after"] = [mirror.after_call(m, before[k]) for k, m in models.items()]
    return reply


def inside_invoke() -> bool:
    """True while a request (or a self-check's call) is running: calls then stay live."""
    return bool(_state.get("invoking"))


def signs_of_tampering() -> list[str]:
    """What student code changed that grading relies on: builtins, stdout, torch comparisons."""
    signs = [
        f"builtins.{name} was replaced"
        for name, original in _state.get("builtins", {}).items()
        if getattr(builtins, name, None) is not original
    ]
    if "stdout" in _state and sys.stdout is not _state["stdout"]:
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


def _argument(item: Any, namespace: dict) -> Any:
    if isinstance(item, dict) and "model" in item:
        return mirror.rebuild(item["model"])
    if isinstance(item, dict) and "name" in item:
        return resolve(namespace, item["name"])
    return wire.decode(item)


def _is_data(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


@contextlib.contextmanager
def _seeded(outermost: bool):
    # The outermost call starts from seed 0 and leaves the caller's random state as it was;
    # calls inside a probe share the probe's stream (two calls see different dropout masks).
    if not outermost:
        yield
        return
    import torch

    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random.seed(0)
        try:
            yield
        finally:
            random.setstate(python_state)


@contextlib.contextmanager
def _forbidden(forbid):
    # Make library functions raise with advice while the student's code runs (learning aid).
    patched = []
    try:
        for module_name, attribute, advice in forbid:
            owner = _owner(module_name)
            patched.append((owner, attribute, getattr(owner, attribute)))
            setattr(owner, attribute, _refusal(advice))
        yield
    finally:
        for owner, attribute, original in reversed(patched):
            setattr(owner, attribute, original)


def _owner(dotted: str):
    module_name, _, class_name = dotted.partition(":")
    owner = importlib.import_module(module_name)
    return getattr(owner, class_name) if class_name else owner


def _refusal(advice: str) -> Callable:
    from ftlab.exercises.checks import Wrong

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Wrong(advice)

    return refuse


def _describe_error(error: BaseException, probe: bool) -> dict:
    from ftlab.exercises.checks import Unanswered, Wrong

    return {
        "type": type(error).__name__[:60],
        "message": str(error)[:500],
        "where": _where(error),
        "not_implemented": isinstance(error, NotImplementedError),
        "wrong": isinstance(error, Wrong),
        "unanswered": isinstance(error, Unanswered),
    }


def _where(error: BaseException) -> str:
    # The deepest line of the student's own code in the traceback.
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not any(marker in frame.filename for marker in _LIBRARY_MARKERS)
    ]
    if not frames or not frames[-1].line:
        return ""
    return f" (in your line `{frames[-1].line.strip()[:80]}`)"
