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
import importlib
import json
import random
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftlab.exercises import mirror, tamper, wire

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
    body["signs"] = tamper.signs(_state)
    body["code"] = tamper.code_digests()
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
