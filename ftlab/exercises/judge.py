"""Run one planned submission in its sandboxed kernel and judge its questions on the way.

Used by `ftlab.exercises.grade`, which plans the cells. Student cells run in the kernel
(`ftlab.exercises.kernel`); at each question the grader runs the checks in its own process on a
`RemoteNamespace` (`ftlab.exercises.remote`), then the solution's hidden tests, also here. The
notebook's time limit starts after the grader's setup cell. Course tooling.
"""

from __future__ import annotations

import builtins
import math
import time
from dataclasses import dataclass, field

from ftlab.exercises import checks, remote, wire
from ftlab.exercises.kernel import GradingError, Kernel

# Imports torch and the checks' tools before any student cell: every student's clock starts after.
SETUP = "__import__('ftlab.exercises.serve').exercises.serve.install(globals())"
SETUP_TIMEOUT = 300  # seconds for the grader's setup cell in a fresh kernel


@dataclass
class Run:
    """What grading one submission left: errors by cell, results by question, why it stopped."""

    errors: dict[int, str] = field(default_factory=dict)  # planned index -> "Type: message"
    results: dict[str, checks.Result] = field(default_factory=dict)
    stopped: str = ""  # why execution stopped early
    stopped_at: int | None = None
    tampered: str = ""


def execute(plan, lesson: str, tests: dict, timeout: float, cell_timeout: float, where) -> Run:
    """Run the planned cells in a new sandboxed kernel, judging each question on the way."""
    run = Run()
    kernel = Kernel(where.copy, where.hide, where.limits, where.slot)
    try:
        setup = kernel.run(SETUP, SETUP_TIMEOUT)
        if setup.error or setup.stopped or setup.timed_out:
            reason = setup.error or setup.stopped or "it timed out"
            raise GradingError(f"the grader's setup cell failed in the kernel: {reason}")
        channel = remote.Channel(lambda code, nonce: _request(kernel, code, nonce, cell_timeout))
        deadline = time.monotonic() + timeout
        for index, planned in enumerate(plan):
            if index == 0:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                run.stopped, run.stopped_at = (
                    f"the notebook ran past its {timeout:g} s limit",
                    index,
                )
                break
            if not _step(
                kernel, channel, planned, index, run, lesson, tests, cell_timeout, remaining
            ):
                break
    finally:
        kernel.close()
    return run


def _step(kernel, channel, planned, index, run, lesson, tests, cell_timeout, remaining) -> bool:
    # One planned cell: a student cell runs in the kernel, a question is judged here.
    if planned.grades:
        try:
            run.results[planned.grades] = judge(
                f"{lesson}.{planned.grades}", channel, lesson, tests
            )
        except wire.Tampered as error:
            run.tampered = f"{error} (seen while grading {lesson}.{planned.grades})"
            return False
        except remote.Stopped:
            run.stopped, run.stopped_at = kernel.stopped, index
            return False
        return True
    limit = max(1, math.ceil(min(cell_timeout, remaining)))
    outcome = kernel.run(planned.source, limit)
    if outcome.error:
        run.errors[index] = outcome.error
    if outcome.timed_out:
        run.errors[index] = f"Timeout: the cell ran longer than {limit} s and was interrupted"
    if outcome.stopped:
        run.stopped, run.stopped_at = outcome.stopped, index
        run.errors[index] = f"KernelDied: {outcome.stopped}"
        return False
    return True


def _request(kernel: Kernel, code: str, nonce: str, timeout: float) -> tuple[str | None, str]:
    outcome = kernel.run(code, max(1, math.ceil(timeout)), nonce)
    if outcome.stopped:
        return None, "stopped"
    if outcome.timed_out:
        return None, "timeout"
    if outcome.reply == "":
        raise wire.Tampered("the kernel sent two replies to one request")
    return outcome.reply, "ok"


def judge(question_id: str, channel: remote.Channel, lesson: str, tests: dict) -> checks.Result:
    """Judge one question in the grader's process from what the kernel sends back."""
    namespace = remote.RemoteNamespace(channel, lesson)
    result = checks.run(question_id, namespace)
    source = tests.get(question_id.split(".")[1], "")
    if source and result.passed:
        scope = _HiddenScope(namespace)
        try:
            exec(compile(source, "<hidden tests>", "exec"), _hidden_globals(), scope)
        except wire.Abort:
            raise
        except Exception as error:
            message = f"hidden test failed: {type(error).__name__}: {error}".rstrip(": ")
            result = checks.Result(question_id, 0, result.max_points, message)
    return result


class _HiddenScope(dict):
    # Hidden tests' names: their own assignments first, then the student's (from the kernel).
    def __init__(self, namespace: remote.RemoteNamespace):
        super().__init__()
        self.namespace = namespace

    def __missing__(self, name: str):
        if name in _hidden_globals() or hasattr(builtins, name):
            raise KeyError(name)  # Python goes on to the globals and builtins
        return self.namespace[name]


def _hidden_globals() -> dict:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    return {"__builtins__": builtins, "torch": torch, "nn": nn, "F": F, "math": math}
