"""Exercises from one source: self-checks for students, exercise generation, class grading.

- Students call `check("q1")` after each question (after `LESSON = "01"` in the first cell, or
  `check("01.q1")`). It runs the question's checks from `ftlab/exercises/checks/` on the
  notebook's own names and says what is wrong; a failed check raises, so "Run all" stops
  where help is needed.
- `solutions/NN_topic.ipynb` is the single source. Answers sit between nbgrader's markers
  `### BEGIN SOLUTION` / `### END SOLUTION` (the exercise gets `# YOUR CODE HERE` +
  `raise NotImplementedError()`), hidden tests between `### BEGIN HIDDEN TESTS` / `### END HIDDEN
  TESTS` (removed from the exercise). `ftlab exercises build` grades each solution first and
  refuses to write an exercise whose solution fails a check. Cells keep nbgrader metadata, so an
  instructor can also use these sources with nbgrader on a JupyterHub.
  (Generation: `ftlab.exercises.build`.)
- `ftlab exercises grade SUBMISSIONS_DIR` grades a class to CSV (`ftlab.exercises.classroom`).

Grading design. Checks look at the student's functions and values, which only exist once the
student's cells have run, in order. Each submission runs in a fresh kernel of its own, cell by
cell, skipping the cells tagged `expensive` (training runs, plots of them); importing the answer
cells alone was rejected because answers use names that earlier, ungraded cells define.
Student code is treated as hostile:

- Verdicts are made in the grader's process (`ftlab.exercises.judge`), never in the kernel.
  Where a `check("qN")` cell was, the grader runs question N's checks itself; they call the
  student's functions in the kernel on inputs the grader chose and get back plain data
  (`ftlab.exercises.remote`, `ftlab.exercises.serve`). Hidden checks never enter the kernel.
  Signs of tampering (patched builtins, stdout, torch comparisons or ftlab's grading code, a
  forged reply, a model the kernel rebuilt differently) grade the submission 0, "tampered".
- The kernel is sandboxed (`ftlab.exercises.sandbox`): own process group, a folder holding a
  copy of only this submission, resource limits, a watchdog, and as root also its own uid,
  no network and private PID/mount namespaces. At a limit its whole tree is killed; the rows
  say why, and the other students are graded as usual (`ftlab.exercises.classroom`).

The self-check `check("q1")` runs the same checks in the student's own process: it is for
learning, instant, and not tamper-proof.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from pathlib import Path

import nbformat

from ftlab.exercises import checks, classroom, namespaces, sandbox
from ftlab.exercises.build import lesson_of_path, make_exercise, validate_solution
from ftlab.exercises.grade import Row, grade_notebook, submissions_in


class CheckFailed(AssertionError):
    """A self-check failed; shown in a notebook as one line that says what is wrong."""

    def __init__(self, result: checks.Result):
        super().__init__(str(result))
        self.result = result

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m{self.result}\x1b[0m"]


def check(name: str) -> None:
    """Check your answer to one question ("q1" with LESSON set, or "01.q1"); raise if wrong.

    Used after every question of the exercises (`exercises/NN_topic.ipynb`).
    """
    namespace = inspect.currentframe().f_back.f_globals
    question_id = question_id_of(name, namespace.get("LESSON"))
    _load_hidden_from_environment()
    result = checks.run(question_id, namespace)
    if not result.passed:
        raise CheckFailed(result)
    print(result)


def question_id_of(name: str, lesson: str | None) -> str:
    """Return the full id "01.q1" of a question named "q1" (in `lesson`) or "01.q1"."""
    if checks.QUESTION_ID.match(str(name)):
        return name
    if not re.fullmatch(r"q\d+", str(name)):
        raise ValueError(f"a question is named like 'q1' or '01.q1', got {name!r}")
    if lesson is None:
        raise ValueError(
            f'check("{name}") needs the lesson: run the first code cell of the exercise '
            f'(it sets LESSON = "01"), or write check("01.{name}")'
        )
    return f"{lesson}.{name}"


def main(argv: list[str]) -> int:
    """`ftlab exercises build [--check]` and `ftlab exercises grade SUBMISSIONS_DIR`."""
    parser = argparse.ArgumentParser(prog="ftlab exercises")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="generate exercises/ from solutions/")
    build.add_argument("lessons", nargs="*", help="only these lessons, e.g. 01 03")
    build.add_argument("--check", action="store_true", help="write nothing; fail if out of sync")
    build.add_argument("--no-run", action="store_true", help="skip grading the solutions")
    grade = commands.add_parser("grade", help="grade a folder of submissions to CSV")
    grade.add_argument("submissions", type=Path)
    grade.add_argument("--out", type=Path, default=Path("grades.csv"))
    grade.add_argument("--timeout", type=float, default=600, help="seconds per notebook")
    grade.add_argument("--cell-timeout", type=float, default=120, help="seconds per cell")
    grade.add_argument("--jobs", type=int, default=1, help="students graded at once")
    grade.add_argument("--resume", action="store_true", help="grade only students without rows")
    grade.add_argument("--memory", type=float, default=6, help="GiB of memory per kernel")
    for sub in (build, grade):
        sub.add_argument("--hidden", type=Path, help="instructor's hidden checks (.py)")
        sub.add_argument("--solutions", type=Path, default=Path("solutions"))
    build.add_argument("--exercises", type=Path, default=Path("exercises"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    closed = namespaces.available() and namespaces.closed_to_others()
    if closed and (args.command == "grade" or not args.no_run):
        print(f"error: the sandbox's users cannot enter {closed}, on the way to {sys.executable} "
              f"or ftlab; let them through (chmod o+x {closed}) or install ftlab in a venv "
              "outside it", file=sys.stderr)  # fmt: skip
        return 2
    hidden = args.hidden or _environment_hidden()
    if hidden is not None:
        try:
            added = checks.load_hidden(hidden)
        except Exception as error:
            print(f"error: cannot load hidden checks {hidden}: {error}", file=sys.stderr)
            return 2
        print(f"loaded {added} hidden checks from {hidden}")
    if args.command == "grade":
        return grade_command(args, hidden)
    return build_command(args, hidden)


def grade_command(args, hidden: Path | None) -> int:
    """`ftlab exercises grade`: exit 0 when every student was graded (bad files get rows)."""
    if not args.submissions.is_dir():
        print(f"error: {args.submissions} is not a folder of submissions")
        return 2
    if not submissions_in(args.submissions):
        print(f"error: no submissions in {args.submissions}")
        return 2
    if args.jobs < 1:
        print("error: --jobs must be at least 1")
        return 2
    limits = sandbox.Limits(memory=int(args.memory * (1 << 30)))
    settings = classroom.Settings(
        args.solutions, hidden, args.timeout, args.cell_timeout, args.jobs, limits
    )
    try:
        rows, failed = classroom.grade_class(args.submissions, args.out, settings, args.resume)
    except OSError as error:
        print(f"error: grading failed: {error}")
        return 1
    print(summary(rows))
    print(f"wrote {len(rows)} rows to {args.out}")
    if failed:
        print(f"error: the grader itself failed on {len(failed)} students: {', '.join(failed)}")
    return 1 if failed else 0


def build_command(args, hidden: Path | None) -> int:
    """`ftlab exercises build`: grade every solution, then write (or --check) the exercises."""
    paths = sorted(args.solutions.glob("[0-9][0-9]_*.ipynb"))
    paths = [p for p in paths if not args.lessons or lesson_of_path(p) in args.lessons]
    if not paths:
        print(f"error: no solution notebooks NN_*.ipynb in {args.solutions}")
        return 2
    problems, generated = [], {}
    for path in paths:
        found, text = _build_one(path, not args.no_run, hidden)
        problems += found
        generated[args.exercises / path.name] = text
    if problems:
        print("\n".join(problems) + "\nrefusing to write the exercises: fix the solutions first")
        return 1
    stale = [p for p, text in generated.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for target in stale:
            print(f"out of sync: {target} (run `ftlab exercises build`)")
        print(f"{len(generated) - len(stale)} of {len(generated)} exercises in sync")
        return 1 if stale else 0
    args.exercises.mkdir(parents=True, exist_ok=True)
    for target in stale:
        target.write_text(generated[target])
        print(f"wrote {target}")
    print(f"{len(generated)} exercises up to date")
    return 0


def _build_one(path: Path, run_checks: bool, hidden: Path | None) -> tuple[list[str], str]:
    # Return the problems of one solution notebook and, when it has none, its exercise's text.
    try:
        solution = nbformat.read(path, as_version=4)
    except Exception as error:
        return [f"{path}: not a readable notebook: {error}"], ""
    problems = validate_solution(solution, lesson_of_path(path), str(path))
    if not problems and run_checks:
        print(f"running the checks on {path}", flush=True)
        rows = grade_notebook(path, "solution", path.parent, hidden=hidden)
        problems = [
            f"{path}: {r.question} fails: {r.message}" for r in rows if r.points < r.max_points
        ]
    if problems:
        return problems, ""
    exercise = make_exercise(solution, f"exercises/{path.name}")
    return [], nbformat.writes(exercise) + "\n"


def summary(rows: list[Row]) -> str:
    """Return a table: per student and lesson, points, questions passed and the first problem."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.student, row.question.split(".")[0]), []).append(row)
    lines = [("student", "lesson", "points", "passed", "first problem")]
    for (student, lesson), group in groups.items():
        points = sum(r.points for r in group)
        total = sum(r.max_points for r in group)
        passed = sum(r.points >= r.max_points > 0 for r in group)
        problem = next(
            (
                f"{r.question}: {r.message}"
                for r in group
                if r.points < r.max_points or r.max_points == 0
            ),
            "",
        )
        lines.append(
            (student, lesson, f"{points:g}/{total:g}", f"{passed}/{len(group)}", problem[:70])
        )
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[4]
        for line in lines
    )


_HIDDEN_ENVIRONMENT = "FTLAB_HIDDEN_CHECKS"


def _environment_hidden() -> Path | None:
    value = os.environ.get(_HIDDEN_ENVIRONMENT, "").strip()
    return Path(value) if value else None


def _load_hidden_from_environment() -> None:
    path = _environment_hidden()
    if path is not None and str(path.resolve()) not in _loaded_hidden:
        checks.load_hidden(path)
        _loaded_hidden.add(str(path.resolve()))


_loaded_hidden: set[str] = set()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
