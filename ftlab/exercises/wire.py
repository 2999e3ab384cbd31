"""Plain data between a student's kernel and the grader: what may cross, and how it is read.

Values cross as JSON: None, booleans, numbers, strings, lists, tuples, dicts, tensors as raw
bytes with dtype and shape, and references to the grader's own objects ("arg0", "arg0:fc.weight").
Anything else becomes an opaque stand-in that names its type and can only fail a check. The
grader decodes strictly: a payload that breaks these rules means the channel was forged, and
the question is graded "tampered". Used on both sides of `ftlab.exercises.serve`. Course tooling.
"""

from __future__ import annotations

import base64
import math
import numbers
import re
from typing import Any

MAX_DEPTH = 8
MAX_ITEMS = 200_000
DTYPES = (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "bool",
)  # fmt: skip


class Abort(Exception):
    """Grading of this submission cannot go on; the checks must not catch it as a wrong answer."""


class Tampered(Abort):
    """The kernel's reply is not what an honest kernel sends: forged channel or patched code."""


class Opaque:
    """A student's value that cannot cross as data; only its type name and repr come back."""

    def __init__(self, text: str = ""):
        self.text = text

    def __repr__(self) -> str:
        return self.text or f"<{type(self).__name__}>"


def encode(value: Any, refs: dict[int, str] | None = None, depth: int = 0) -> Any:
    """Return `value` as JSON-able data; objects listed in `refs` (by id) cross as references."""
    refs = refs or {}
    if id(value) in refs:
        return {"ref": refs[id(value)]}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else {"float": repr(number)}
    if depth >= MAX_DEPTH:
        return _opaque(value)
    if isinstance(value, (list, tuple)):
        key = "list" if isinstance(value, list) else "tuple"
        return {key: [encode(item, refs, depth + 1) for item in value[:MAX_ITEMS]]}
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        return {"dict": [[k, encode(v, refs, depth + 1)] for k, v in list(value.items())]}
    return _encode_object(value, refs, depth)


def _encode_object(value: Any, refs: dict[int, str], depth: int) -> Any:
    import torch

    if isinstance(value, torch.Tensor) and value.layout == torch.strided:
        return _encode_tensor(value)
    if isinstance(value, torch.optim.Optimizer):
        groups = [encode(dict(group), refs, depth + 1) for group in value.param_groups]
        return {"optimizer": type(value).__name__, "groups": groups}
    return _opaque(value)


def _encode_tensor(tensor) -> dict:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    dtype = str(flat.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        return _opaque(tensor)
    raw = flat.view(__import__("torch").uint8).numpy().tobytes() if flat.numel() else b""
    data = base64.b64encode(raw).decode("ascii")
    return {"tensor": [dtype, list(tensor.shape), data], "grad": bool(tensor.requires_grad)}


def _opaque(value: Any) -> dict:
    try:
        text = repr(value)[:80]
    except Exception:
        text = ""
    return {"object": type(value).__name__[:60], "repr": text}


def decode(data: Any, objects: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """Rebuild a value from `encode`'s data; raise Tampered when it breaks the rules."""
    objects = objects or {}
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if depth > MAX_DEPTH + 1 or not isinstance(data, dict) or len(data) > 2:
        raise Tampered(f"unexpected data in the kernel's reply: {str(data)[:60]}")
    if "ref" in data:
        if data["ref"] not in objects:
            raise Tampered(f"the reply refers to an unknown object {str(data['ref'])[:40]}")
        return objects[data["ref"]]
    if "float" in data and data["float"] in ("nan", "inf", "-inf"):
        return float(data["float"])
    if "list" in data or "tuple" in data:
        items = [decode(item, objects, depth + 1) for item in _list(data, "list", "tuple")]
        return items if "list" in data else tuple(items)
    if "dict" in data:
        pairs = _list(data, "dict")
        if not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int)) for p in pairs
        ):
            raise Tampered("a dict in the kernel's reply is malformed")
        return {key: decode(value, objects, depth + 1) for key, value in pairs}
    if "tensor" in data:
        return _decode_tensor(data)
    if "optimizer" in data:
        return _decode_optimizer(data, objects, depth)
    if "object" in data:
        return opaque_named(data["object"], data.get("repr", ""))
    raise Tampered(f"unexpected data in the kernel's reply: {str(data)[:60]}")


def _list(data: dict, *keys: str) -> list:
    value = next(data[key] for key in keys if key in data)
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise Tampered("a list in the kernel's reply is malformed")
    return value


def _decode_tensor(data: dict):
    import torch

    try:
        dtype_name, shape, text = data["tensor"]
        dtype = getattr(torch, dtype_name) if dtype_name in DTYPES else None
        shape = [int(size) for size in shape]
        raw = base64.b64decode(text, validate=True)
    except (TypeError, ValueError, KeyError) as error:
        raise Tampered(f"a tensor in the kernel's reply is malformed: {error}") from None
    numel = math.prod(shape)
    if dtype is None or min(shape, default=0) < 0 or len(raw) != numel * dtype.itemsize:
        raise Tampered("a tensor in the kernel's reply is malformed")
    if numel == 0:
        tensor = torch.empty(shape, dtype=dtype)
    else:
        tensor = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
    return tensor.clone().requires_grad_(bool(data.get("grad")) and tensor.is_floating_point())


def _decode_optimizer(data: dict, objects: dict, depth: int):
    import torch

    groups = decode({"list": data.get("groups")}, objects, depth + 1)
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise Tampered("an optimizer in the kernel's reply is malformed")
    kind = type(_name(data["optimizer"]), (torch.optim.Optimizer,), {})
    optimizer = object.__new__(kind)  # a stand-in: the groups, without torch's machinery
    optimizer.param_groups, optimizer.state, optimizer.defaults = groups, {}, {}
    return optimizer


def opaque_named(name: Any, text: Any = "") -> Opaque:
    """An Opaque whose class carries the student's type name (for messages like "not a dict")."""
    return type(_name(name), (Opaque,), {})(str(text)[:80])


def _name(name: Any) -> str:
    cleaned = re.sub(r"\W", "_", str(name))[:60]
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"
