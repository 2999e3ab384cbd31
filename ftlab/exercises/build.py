"""Generate an exercise notebook from its solution: nbgrader markers, check cells, metadata.

Answers sit between `### BEGIN SOLUTION` / `### END SOLUTION` and become `# YOUR CODE HERE` +
`raise NotImplementedError()`; hidden tests between `### BEGIN HIDDEN TESTS` / `### END HIDDEN
TESTS` are removed; outputs are stripped. Used by `ftlab exercises build`. Course tooling.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from ftlab.exercises import checks

SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_STUB = ("YOUR ANSWER HERE",)
EXPENSIVE_TAG = "expensive"
CHECK_CALL = re.compile(r"""^\s*check\(\s*["'](?:(\d\d)\.)?(q\d+)["']\s*\)""", re.MULTILINE)
_KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def strip_markers(source: str, cell_type: str = "code", where: str = "cell") -> str:
    """Return a cell's source with answers replaced by the stub and hidden tests removed."""
    stub = CODE_STUB if cell_type == "code" else MARKDOWN_STUB
    kept: list[str] = []
    inside, opened_at = None, 0
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker in (SOLUTION_BEGIN, HIDDEN_BEGIN):
            if inside:
                raise ValueError(f"{where}, line {number}: {marker} inside an open {inside}")
            inside, opened_at = marker, number
            if marker == SOLUTION_BEGIN:
                indent = line[: len(line) - len(line.lstrip())]
                kept.extend(indent + stub_line for stub_line in stub)
        elif marker in (SOLUTION_END, HIDDEN_END):
            expected = SOLUTION_BEGIN if marker == SOLUTION_END else HIDDEN_BEGIN
            if inside != expected:
                raise ValueError(f"{where}, line {number}: {marker} without {expected} before it")
            inside = None
        elif inside is None:
            kept.append(line)
    if inside:
        raise ValueError(f"{where}, line {opened_at}: {inside} is never closed")
    return "\n".join(kept)


def hidden_tests(source: str) -> str:
    """Return the code between the hidden-test markers of a cell ("" when there is none)."""
    blocks, inside = [], False
    for line in source.splitlines():
        if line.strip() == HIDDEN_BEGIN:
            inside = True
        elif line.strip() == HIDDEN_END:
            inside = False
        elif inside:
            blocks.append(line)
    return "\n".join(blocks)


def lesson_of_path(path: Path) -> str | None:
    """Return the lesson "01" from a file name such as 01_math_of_fine_tuning.ipynb."""
    match = re.match(r"(\d\d)_", Path(path).name)
    return match.group(1) if match else None


def make_exercise(solution: nbformat.NotebookNode, exercise_path: str) -> nbformat.NotebookNode:
    """Return the student notebook generated from a solution notebook, outputs stripped."""
    from ftlab.exercises.nbtools import BADGE_TAG, SETUP_TAG, badge_markdown, setup_source

    exercise = copy.deepcopy(solution)
    for index, cell in enumerate(exercise.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if BADGE_TAG in tags:
            cell.source = badge_markdown(exercise_path)
        elif SETUP_TAG in tags:
            cell.source = setup_source()
        else:
            cell.source = strip_markers(cell.source, cell.cell_type, f"cell {index}")
        cell.metadata.pop("execution", None)
        cell.id = str(index)  # what nbstripout (pre-commit) writes, so the two agree
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    lesson = lesson_of_path(Path(exercise_path))
    exercise.metadata = {
        "kernelspec": solution.metadata.get("kernelspec", _KERNELSPEC),
        "ftlab": {"lesson": lesson, "source": exercise_path.replace("exercises/", "solutions/")},
    }
    return exercise


def validate_solution(solution: nbformat.NotebookNode, lesson: str, where: str) -> list[str]:
    """Return the structural problems of a solution notebook (markers, check cells, points)."""
    problems, seen = [], {}
    checks.load_lesson(lesson)
    for index, cell in enumerate(solution.cells):
        try:
            strip_markers(cell.source, cell.cell_type, f"{where} cell {index}")
        except ValueError as error:
            problems.append(str(error))
        grading = cell.get("metadata", {}).get("nbgrader", {})
        if SOLUTION_BEGIN in cell.source and not grading.get("solution"):
            problems.append(f"{where} cell {index}: answer cell without nbgrader solution metadata")
        found = CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        if found:
            question_id = f"{lesson}.{found.group(2)}"
            seen[question_id] = index
            if grading.get("grade_id") != found.group(2) or not grading.get("grade"):
                problems.append(f"{where} cell {index}: check cell without nbgrader grade metadata")
            elif grading.get("points") != checks.max_points(question_id, hidden=False):
                problems.append(
                    f"{where} cell {index}: points {grading.get('points')} but the checks of "
                    f"{question_id} are worth {checks.max_points(question_id, hidden=False):g}"
                )
    for question_id in checks.questions(lesson):
        if question_id not in seen:
            problems.append(f"{where}: no check cell for {question_id}")
    for question_id in seen:
        if question_id not in checks.REGISTRY:
            problems.append(f"{where}: check cell for {question_id}, which has no checks")
    return problems
