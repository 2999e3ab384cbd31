"""The exercises' self-checks: a registry of questions, and running one on a student's answers.

Each lesson's checks live in `ftlab/checks/lessonNN.py` and ship inside the package, so
`check("q1")` works in Colab after the one install cell. A check is a function of the notebook's
namespace (its globals) that raises `Wrong("what is wrong and how to fix it")` or returns an
optional success note; one question may have several checks, each worth some points.
Instructors add hidden checks from a file of their own (`load_hidden`), registered with `hidden`.
Course tooling, used by every exercise notebook.
"""

from __future__ import annotations

import importlib
import random
import re
import runpy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ftlab.exercises import wire

QUESTION_ID = re.compile(r"^(\d\d)\.(q\d+)$")


class Wrong(Exception):
    """A check found a wrong answer; the message says what is wrong and how to fix it."""


class Unanswered(Wrong):
    """The question has not been answered yet (a name is missing or still raises)."""


@dataclass
class Result:
    """The outcome of one question: points earned out of `max_points`, and why."""

    question: str
    points: float
    max_points: float
    message: str

    @property
    def passed(self) -> bool:
        return self.points >= self.max_points

    def __str__(self) -> str:
        score = f"{self.points:g}/{self.max_points:g}"
        if self.passed:
            return f"✓ {self.question} passed ({score})" + (
                f": {self.message}" if self.message else ""
            )
        return f"✗ {self.question} ({score}): {self.message}"


@dataclass
class Check:
    """One registered check function of a question, worth `points`."""

    function: Callable[[dict], str | None]
    points: float
    hidden: bool = False
    source: str = ""


REGISTRY: dict[str, list[Check]] = {}


def question(question_id: str, points: float = 1) -> Callable:
    """Register a visible check for `question_id` ("01.q1"), worth `points`."""
    return _register(question_id, points, hidden=False, source="")


def hidden(question_id: str, points: float = 1) -> Callable:
    """Register an instructor's hidden check, from a file given to `load_hidden`."""
    return _register(question_id, points, hidden=True, source=_loading_hidden or "")


def questions(lesson: str) -> list[str]:
    """Return the question ids of a lesson, in order ("01.q1", "01.q2", ...)."""
    load_lesson(lesson)
    found = [q for q in REGISTRY if q.startswith(f"{lesson}.")]
    return sorted(found, key=lambda q: int(q.split(".q")[1]))


def max_points(question_id: str, hidden: bool = True) -> float:
    """Return how many points a question is worth (visible checks, and loaded hidden ones)."""
    return sum(c.points for c in REGISTRY.get(question_id, []) if hidden or not c.hidden)


def load_lesson(lesson: str) -> None:
    """Import the checks of one lesson ("01"), with a clear error for a lesson without checks."""
    if not re.fullmatch(r"\d\d", str(lesson)):
        raise ValueError(f"a lesson is two digits such as '01', got {lesson!r}")
    try:
        importlib.import_module(f"ftlab.exercises.checks.lesson{lesson}")
    except ModuleNotFoundError as error:
        if error.name != f"ftlab.exercises.checks.lesson{lesson}":
            raise
        have = sorted(p.stem[6:] for p in Path(__file__).parent.glob("lesson[0-9][0-9].py"))
        raise ValueError(f"no checks for lesson {lesson}; lessons with checks: {have}") from None


_loading_hidden: str | None = None


def load_hidden(path: str | Path) -> int:
    """Register the hidden checks in an instructor's file; return how many it added.

    Loading the same file again replaces its checks rather than adding them twice.
    """
    global _loading_hidden
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"hidden checks file {path} does not exist")
    for checks in REGISTRY.values():
        checks[:] = [c for c in checks if c.source != str(path)]
    before = sum(len(checks) for checks in REGISTRY.values())
    _loading_hidden = str(path)
    try:
        runpy.run_path(str(path), run_name="ftlab_hidden_checks")
    finally:
        _loading_hidden = None
    return sum(len(checks) for checks in REGISTRY.values()) - before


def run(question_id: str, namespace: dict) -> Result:
    """Run every check of a question on a namespace; return the points and the first problem."""
    match = QUESTION_ID.match(question_id)
    if not match:
        raise ValueError(f"a question id looks like '01.q1', got {question_id!r}")
    lesson = match.group(1)
    known = questions(lesson)
    if question_id not in known:
        raise ValueError(f"lesson {lesson} has no question {match.group(2)!r}; it has {known}")
    points, problems, notes = 0.0, [], []
    for check in REGISTRY[question_id]:
        try:
            note = _isolated(check.function, namespace)
        except Wrong as error:
            problems.append(str(error))
            continue
        except wire.Abort:
            raise  # tampering or a lost kernel: not a wrong answer, the grader handles it
        except Exception as error:  # a strange answer can break the check itself: say so
            problems.append(f"the check could not use your answer: {type(error).__name__}: {error}")
            continue
        points += check.points
        if note:
            notes.append(note)
    message = problems[0] if problems else "; ".join(notes)
    return Result(question_id, points, max_points(question_id), message)


def _register(question_id: str, points: float, hidden: bool, source: str) -> Callable:
    if not QUESTION_ID.match(question_id):
        raise ValueError(f"a question id looks like '01.q1', got {question_id!r}")

    def register(function: Callable) -> Callable:
        REGISTRY.setdefault(question_id, []).append(Check(function, points, hidden, source))
        return function

    return register


def _isolated(function: Callable, namespace: dict) -> str | None:
    # Checks are deterministic and leave the student's random state, grad mode and threads as
    # they were. One thread: on tiny tensors, thread handoffs cost more than they save (a
    # check that takes 0.4 s on one thread took 15 s on two busy cores).
    python_state, threads = random.getstate(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(0)
            random.seed(0)
            return function(namespace)
    finally:
        random.setstate(python_state)
        torch.set_num_threads(threads)
