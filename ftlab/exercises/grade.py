"""Grade one submission: its cells run in a sandboxed kernel, its questions are judged here.

The submission's cells run in order in a fresh kernel (`ftlab.exercises.kernel`, isolated by
`ftlab.exercises.sandbox`), skipping the cells tagged `expensive`. Where a `check("qN")` cell
was, the grader judges question N in its own process: the checks read the student's names
through `ftlab.exercises.remote.RemoteNamespace`, so the student's code runs in the kernel on
inputs the grader chose and only plain data comes back. Hidden tests (the instructor's file, and
the solution's `### BEGIN HIDDEN TESTS` blocks) run here too and never enter the kernel. Signs
of tampering give every question of the submission 0 points and the message "tampered".
Course tooling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from ftlab.exercises import checks, sandbox
from ftlab.exercises.build import CHECK_CALL, EXPENSIVE_TAG, hidden_tests, lesson_of_path
from ftlab.exercises.judge import SETUP, Run, execute


@dataclass
class Row:
    """One line of the grade table."""

    student: str
    question: str
    points: float
    max_points: float
    message: str


@dataclass
class Sandboxing:
    """Where and how a submission's kernel runs: its files, hidden paths, limits and slot."""

    copy: Path | None = None  # what the kernel's folder holds (default: the notebook alone)
    hide: list[Path] = field(default_factory=list)
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    slot: int = 0


def grade_notebook(
    path: Path,
    student: str,
    solutions: Path | None = None,
    timeout: float = 600,
    cell_timeout: float = 120,
    hidden: Path | None = None,
    sandboxing: Sandboxing | None = None,
) -> list[Row]:
    """Grade one submission; a bad file gives rows that say why, never an exception.

    Hidden checks from `hidden` must already be loaded (`checks.load_hidden`); the path is only
    hidden from the kernel.
    """
    try:
        notebook = _read(path)
    except ValueError as error:
        return _zero_rows(student, lesson_of_path(path), str(error))
    lesson = _lesson_of(notebook, path)
    if lesson is None:
        reason = 'cannot tell the lesson: no LESSON = "NN" cell and the file name has no NN_ prefix'
        return [Row(student, "-", 0, 0, reason)]
    try:
        question_ids = checks.questions(lesson)
    except ValueError as error:
        return [Row(student, "-", 0, 0, str(error))]
    plan = _plan(notebook, lesson, question_ids)
    sandboxing = sandboxing or Sandboxing()
    sandboxing.copy = sandboxing.copy or path
    sandboxing.hide = [*sandboxing.hide, *(p for p in (solutions, hidden) if p)]
    tests = _solution_hidden_tests(solutions, lesson)
    run = execute(plan, lesson, tests, timeout, cell_timeout, sandboxing)
    return [_row(student, question_id, plan, run) for question_id in question_ids]


def submissions_in(directory: Path) -> list[tuple[str, Path]]:
    """Return (student, file): top-level files are named by stem, folders by their name."""
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file():
            found.append((entry.stem, entry))
        elif entry.is_dir():
            notebooks = sorted(entry.rglob("*.ipynb"))
            notebooks = [p for p in notebooks if ".ipynb_checkpoints" not in p.parts]
            found.extend((entry.name, p) for p in notebooks)
            if not notebooks:
                found.append((entry.name, entry))
    return found


@dataclass
class _Planned:
    source: str
    section: str | None  # the question this cell belongs to (the next check cell)
    number: int | None  # 1-based cell number in the submission; None for appended checks
    grades: str | None = None  # question graded by this cell


def _read(path: Path) -> nbformat.NotebookNode:
    if path.is_dir():
        raise ValueError("no notebook (.ipynb) in this folder")
    if path.suffix != ".ipynb":
        raise ValueError(f"not a notebook: {path.name} (expected a .ipynb file)")
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ValueError(f"corrupt notebook, cannot be read: {reason}") from None
    # Lenient on purpose: a field an editor added must not cost a student their grade.
    cells = notebook.get("cells")
    if not isinstance(cells, list) or not all(_is_cell(cell) for cell in cells):
        raise ValueError("corrupt notebook: its cells are not a list of cells with a source")
    for cell in [notebook, *cells]:
        cell.setdefault("metadata", {})
    return notebook


def _is_cell(cell) -> bool:
    return (
        isinstance(cell, dict)
        and cell.get("cell_type") in ("code", "markdown", "raw")
        and (isinstance(cell.get("source"), str))
    )


def _lesson_of(notebook: nbformat.NotebookNode, path: Path) -> str | None:
    lesson = notebook.metadata.get("ftlab", {}).get("lesson")
    for cell in notebook.cells:
        found = re.search(r"""^LESSON\s*=\s*["'](\d\d)["']""", cell.source, re.MULTILINE)
        if lesson is None and cell.cell_type == "code" and found:
            lesson = found.group(1)
    return lesson or lesson_of_path(path)


def _plan(notebook, lesson: str, question_ids: list[str]) -> list[_Planned]:
    plan, graded = [_Planned(SETUP, None, None)], set()
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code" or EXPENSIVE_TAG in cell.metadata.get("tags", []):
            continue
        name = _question_of_check_cell(cell, lesson)
        if name and f"{lesson}.{name}" in question_ids and name not in graded:
            graded.add(name)
            plan.append(_Planned(f"check({name!r})", None, number, name))
        else:
            plan.append(_Planned(cell.source, None, number))
    section = None
    for planned in reversed(plan):  # a cell belongs to the question whose check follows it
        section = planned.grades or section
        planned.section = section
    for question_id in question_ids:
        name = question_id.split(".")[1]
        if name not in graded:
            plan.append(_Planned(f"check({name!r})", name, None, name))
    return plan


def _question_of_check_cell(cell, lesson: str) -> str | None:
    grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
    found = CHECK_CALL.search(cell.source)
    if found and found.group(1) in (None, lesson):
        return found.group(2)
    if cell.metadata.get("nbgrader", {}).get("grade") and grade_id:
        return grade_id  # the call was edited away: still grade this question here
    return None


def _solution_hidden_tests(solutions: Path | None, lesson: str) -> dict[str, str]:
    # nbgrader-style hidden tests live in the solution's check cells; put them back when grading.
    found = sorted(Path(solutions).glob(f"{lesson}_*.ipynb")) if solutions else []
    if not found:
        return {}
    tests = {}
    for cell in nbformat.read(found[0], as_version=4).cells:
        call = CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        if call and hidden_tests(cell.source):
            tests[call.group(2)] = hidden_tests(cell.source)
    return tests


def _row(student: str, question_id: str, plan: list[_Planned], run: Run) -> Row:
    name = question_id.split(".")[1]
    index = next(i for i, p in enumerate(plan) if p.grades == name)
    result = run.results.get(name)
    if run.tampered:
        maximum = checks.max_points(question_id)
        return Row(student, question_id, 0, maximum, f"tampered: {run.tampered}")
    if result is None:
        points, maximum = 0.0, checks.max_points(question_id)
        if run.stopped and (run.stopped_at is None or run.stopped_at <= index):
            message = f"not graded: {run.stopped}"
        elif index in run.errors:
            message = f"the check could not run: {run.errors[index]}"
        else:
            message = "not graded"
    else:
        points, maximum, message = result.points, result.max_points, result.message
    if points < maximum:
        message += _errors_before(name, index, plan, run)
    if plan[index].number is None:
        message += " [its check cell was deleted: graded after the last cell]"
    return Row(student, question_id, points, maximum, message)


def _errors_before(name: str, index: int, plan: list[_Planned], run: Run) -> str:
    own = [i for i in run.errors if i < index and plan[i].section == name and i != index]
    earlier = [i for i in run.errors if i < index and i not in own and plan[i].grades is None]
    chosen = own or earlier[:1]
    if not chosen:
        return ""
    described = [
        f"cell {plan[i].number} ({_first_line(plan[i].source)}) raised {run.errors[i]}"
        for i in chosen[:2]
    ]
    more = f"; {len(chosen) - 2} more" if len(chosen) > 2 else ""
    return " | " + ("earlier, " if not own else "") + "; ".join(described) + more


def _first_line(source: str) -> str:
    line = next(
        (text.strip() for text in source.splitlines() if text.strip()[:1] not in ("", "#")), ""
    )
    return f"`{line[:40]}`"


def _zero_rows(student: str, lesson: str | None, reason: str) -> list[Row]:
    try:
        question_ids = checks.questions(lesson) if lesson else []
    except ValueError:
        question_ids = []
    if not question_ids:
        return [Row(student, "-", 0, 0, reason)]
    return [Row(student, q, 0, checks.max_points(q), reason) for q in question_ids]
