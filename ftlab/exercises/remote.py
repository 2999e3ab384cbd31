"""The grader's side of a student's kernel: a namespace whose values come back as plain data.

`RemoteNamespace` stands in for the student's globals while the grader runs a question's checks
in its own process: reading a name asks the kernel for its value (`ftlab.exercises.serve`),
a function comes back as a `RemoteCallable` that runs the student's function in the kernel on
arguments the grader chose. Replies are read strictly: a missing, doubled or malformed reply, a
sign of tampering in the kernel, or a kernel copy of the grader's model that differs, raises
`Tampered`. `unpack` turns a reply into a value or an exception for both the remote path and the
in-process self-check. Course tooling.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ftlab.exercises import mirror, wire
from ftlab.exercises.tamper import code_digests

ALWAYS_LOADED = ("ftlab.exercises.serve", "ftlab.exercises.wire", "ftlab.exercises.mirror")


class Stopped(wire.Abort):
    """The kernel ended or stopped answering: the rest of the submission cannot be graded."""


class TimedOut(Exception):
    """A request ran past its time limit and was interrupted."""


class Channel:
    """Requests to one kernel: `execute(code, nonce)` returns (reply line or None, outcome)."""

    def __init__(self, execute: Callable[[str, str], tuple[str | None, str]]):
        self.execute = execute
        self.expected_code = code_digests()

    def request(self, body: dict) -> dict:
        nonce = secrets.token_hex(16)
        text = json.dumps({**body, "nonce": nonce})
        line, outcome = self.execute(f"__ftlab_serve__({json.dumps(text)})", nonce)
        if outcome == "timeout":
            raise TimedOut()
        if outcome == "stopped":
            raise Stopped()
        if line is None:
            raise wire.Tampered("the grading channel was replaced: the kernel sent no reply")
        return self.check(line)

    def check(self, line: str) -> dict:
        try:
            reply = json.loads(line)
        except ValueError:
            raise wire.Tampered("the kernel's reply is not JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("signs"), list):
            raise wire.Tampered("the kernel's reply is malformed")
        if reply["signs"]:
            raise wire.Tampered("; ".join(str(sign)[:80] for sign in reply["signs"][:3]))
        theirs = reply.get("code") if isinstance(reply.get("code"), dict) else {}
        changed = [
            name
            for name, digest in self.expected_code.items()
            if (name in theirs or name in ALWAYS_LOADED) and theirs.get(name) != digest
        ]
        if changed:
            raise wire.Tampered(f"grading code was replaced in the kernel: {changed[0]}")
        if "failed" in reply:
            raise wire.Tampered(f"the grading request failed in the kernel: {reply['failed']}")
        return reply


class RemoteNamespace(Mapping):
    """The student's globals, seen from the grader: values as data, functions as handles."""

    def __init__(self, channel: Channel, lesson: str):
        self.channel, self.lesson, self._cache = channel, lesson, {}

    def __getitem__(self, name: str) -> Any:
        if name == "LESSON":
            return self.lesson
        if name not in self._cache:
            self._cache[name] = self._fetch(name)
        found = self._cache[name]
        if found is _MISSING:
            raise KeyError(name)
        return found

    def _fetch(self, name: str) -> Any:
        reply = self.channel.request({"op": "get", "name": name})
        if reply.get("missing"):
            return _MISSING
        if reply.get("ellipsis"):
            return Ellipsis
        if "callable" in reply:
            return RemoteCallable(self.channel, name, reply["callable"], reply.get("type", ""))
        if "value" not in reply:
            raise wire.Tampered("the kernel's reply to a look-up is malformed")
        return wire.decode(reply["value"])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name == "LESSON" or self._get(name) is not _MISSING)

    def _get(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            return _MISSING

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def forget(self) -> None:
        """Drop cached values (after student code ran, they may have changed)."""
        self._cache.clear()


_MISSING = object()


class RemoteCallable:
    """A student's function or class, living in the kernel; calling it runs it there."""

    def __init__(self, channel: Channel, name: str, kind: str, type_name: str):
        self.channel, self.name, self.kind, self.type_name = channel, name, kind, type_name
        self.__name__ = name.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"<student's {self.kind} {self.name}>"

    def request(self, args: tuple, kwargs: dict, forbid=(), probe: str = "") -> tuple[dict, dict]:
        """Send a call (or a probe) with these arguments; return the reply and the models sent."""
        models, encoded = _arguments(args, kwargs)
        body = {"op": "probe", "probe": probe} if probe else {"op": "call", "name": self.name}
        body.update(
            args=encoded[: len(args)], kwargs=dict(zip(kwargs, encoded[len(args) :], strict=True))
        )
        body["forbid"] = [list(item) for item in forbid]
        return self.channel.request(body), models

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        reply, models = self.request(args, kwargs)
        return unpack(reply, models)


def _arguments(args: tuple, kwargs: dict) -> tuple[dict, list]:
    from torch import nn

    models, encoded = mirror.sent_models([*args, *kwargs.values()]), []
    for value in [*args, *kwargs.values()]:
        if isinstance(value, nn.Module):
            encoded.append({"model": mirror.describe(value)})
        elif isinstance(value, RemoteCallable):
            encoded.append({"name": value.name})
        else:
            encoded.append(wire.encode(value))
    return models, encoded


def unpack(reply: dict, models: dict, apply: bool = True) -> Any:
    """Turn a call's reply into its value, or raise `StudentRaised`; sync the models sent."""
    prints, after = reply.get("print"), reply.get("after")
    if not isinstance(prints, list) or not isinstance(after, list) or len(after) != len(models):
        raise wire.Tampered("the kernel's reply to a call is malformed")
    for (key, model), theirs, state in zip(models.items(), prints, after, strict=True):
        if not apply:
            continue  # in-process: the model is the one the function changed
        if not mirror.same_fingerprint(mirror.fingerprint(model), theirs):
            raise wire.Tampered(f"the kernel's copy of the grader's model ({key}) differs")
        mirror.apply_after(model, state)
    if "raised" in reply:
        raise StudentRaised(reply["raised"])
    if "result" not in reply:
        raise wire.Tampered("the kernel's reply to a call has no result")
    return wire.decode(reply["result"], mirror.objects(models))


class StudentRaised(Exception):
    """The student's code raised; `.type`, `.message`, `.where` describe it."""

    def __init__(self, description: Any):
        if not isinstance(description, dict):
            raise wire.Tampered("the kernel's description of an error is malformed")
        self.type = str(description.get("type", "Exception"))[:60]
        self.message = str(description.get("message", ""))[:500]
        self.where = str(description.get("where", ""))[:200]
        self.not_implemented = description.get("not_implemented") is True
        self.wrong = description.get("wrong") is True
        self.unanswered = description.get("unanswered") is True
        super().__init__(f"{self.type}: {self.message}")


def local_reply(reply: dict) -> dict:
    """The in-process self-check's reply, through JSON like a kernel's (same rules both ways)."""
    return json.loads(json.dumps(reply))
