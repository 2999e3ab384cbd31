"""Grade a class: each submission in its own sandboxed kernel, in parallel if asked, nothing lost.

`ftlab exercises grade SUBMISSIONS_DIR` calls `grade_class`. Each student's rows are appended to
a journal next to the output as soon as they are known; `grades.csv` is written once, at the
end, to a temporary file renamed over the old one (a crash never leaves half a table); a log of
the run (isolation used, each student's outcome and time) is written beside it. `resume=True`
keeps the students the output or the journal already has rows for and grades the others.
With `jobs` > 1, students are graded in that many worker processes, each with its own sandbox
user; rows come out in the same order and with the same content as with one job. Course tooling.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ftlab.exercises import checks, namespaces, sandbox
from ftlab.exercises.grade import Row, Sandboxing, grade_notebook, submissions_in
from ftlab.exercises.kernel import GradingError

CSV_COLUMNS = ("student", "question", "points", "max_points", "message")


@dataclass
class Settings:
    """How to grade: where things are, time limits, parallel jobs and the sandbox's limits."""

    solutions: Path | None = None
    hidden: Path | None = None
    timeout: float = 600
    cell_timeout: float = 120
    jobs: int = 1
    limits: sandbox.Limits | None = None
    hide: tuple[Path, ...] = ()


def grade_class(submissions: Path, out: Path, settings: Settings, resume=False, say=print):
    """Grade every student in `submissions`; write `out`; return (rows, students that failed)."""
    found = _students(submissions)
    out.parent.mkdir(parents=True, exist_ok=True)
    journal, log = _journal_path(out), _log_path(out)
    done = _rows_on_record(out, journal) if resume else {}
    done = {student: rows for student, rows in done.items() if student in found}
    if resume:
        others = len(found) - len(done)
        say(f"--resume: {len(done)} already graded in {out.name}; grading the other {others}")
    elif journal.exists():
        journal.unlink()
    todo = [(student, paths) for student, paths in found.items() if student not in done]
    settings.hide = (submissions.resolve(), out.resolve().parent, *settings.hide)
    failed = []
    with open(log, "a") as log_file:
        _log(log_file, f"grading {len(todo)} students of {submissions} ({len(done)} resumed)")
        _log(log_file, f"isolation: {describe_isolation()}")
        for student, rows, seconds, error in _graded(todo, settings):
            done[student] = rows
            _append(journal, student, rows)
            _log(log_file, f"{student}: {_outcome(rows, error)} in {seconds:.1f} s")
            say(f"graded {student}: {_outcome(rows, error)} ({seconds:.0f} s)", flush=True)
            if error:
                failed.append(student)
        rows = [row for student in found for row in done.get(student, [])]
        write_csv(rows, out)
        _log(log_file, f"wrote {len(rows)} rows to {out}")
    journal.unlink(missing_ok=True)
    return rows, failed


def describe_isolation() -> str:
    """One line: what the sandbox enforces on this machine."""
    if namespaces.available():
        return (
            "own uid per job, no network, own PID and mount namespaces (submissions, solutions, "
            "output and hidden checks hidden; private /tmp), rlimits, memory/process watchdog"
        )
    return (
        "runs as the grader's user (not root or no unshare): own session, own folder, rlimits, "
        "memory/process watchdog; NO uid, network or filesystem isolation"
    )


def _students(submissions: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for student, path in submissions_in(submissions):
        found.setdefault(student, []).append(path)
    return found


def _graded(todo: list, settings: Settings):
    # Yields (student, rows, seconds, error) in the order of `todo`, whatever finishes first.
    if settings.jobs <= 1 or len(todo) <= 1:
        for student, paths in todo:
            yield _grade_student(student, paths, settings, slot=0)
        return
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(settings.jobs):
        slots.put(slot)
    with ProcessPoolExecutor(
        settings.jobs, mp_context=context, initializer=_start_worker, initargs=(slots, settings)
    ) as pool:
        futures = [pool.submit(_grade_in_worker, student, paths) for student, paths in todo]
        for future in futures:
            yield future.result()


_worker: dict = {}


def _start_worker(slots, settings: Settings) -> None:
    _worker.update(slot=slots.get(), settings=settings)
    if settings.hidden:
        checks.load_hidden(settings.hidden)


def _grade_in_worker(student: str, paths: list[Path]):
    return _grade_student(student, paths, _worker["settings"], _worker["slot"])


def _grade_student(student: str, paths: list[Path], settings: Settings, slot: int):
    started, rows, error = time.monotonic(), [], ""
    for path in paths:
        where = Sandboxing(
            copy=path if path.parent.name != student else path.parent,
            hide=list(settings.hide),
            limits=settings.limits or sandbox.Limits(),
            slot=slot,
        )
        try:
            rows += grade_notebook(
                path, student, settings.solutions, settings.timeout, settings.cell_timeout,
                settings.hidden, where,
            )  # fmt: skip
        except (GradingError, OSError) as failure:
            error = f"not graded: the grader failed: {failure}"
            rows.append(Row(student, "-", 0, 0, error))
    return student, rows, time.monotonic() - started, error


def write_csv(rows: list[Row], path: Path) -> None:
    """Write the grade table atomically: a temporary file in the same folder, then a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            points, maximum = f"{row.points:g}", f"{row.max_points:g}"
            writer.writerow([row.student, row.question, points, maximum, row.message])
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _rows_on_record(out: Path, journal: Path) -> dict[str, list[Row]]:
    # Students with rows in a finished table or in the journal of an interrupted run.
    found: dict[str, list[Row]] = {}
    if out.exists():
        with open(out, newline="") as handle:
            for record in csv.DictReader(handle):
                row = Row(
                    record["student"], record["question"], float(record["points"]),
                    float(record["max_points"]), record["message"],
                )  # fmt: skip
                found.setdefault(row.student, []).append(row)
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
                found[entry["student"]] = [Row(**row) for row in entry["rows"]]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the interruption
    return found


def _append(journal: Path, student: str, rows: list[Row]) -> None:
    with open(journal, "a") as handle:
        handle.write(json.dumps({"student": student, "rows": [asdict(r) for r in rows]}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _outcome(rows: list[Row], error: str) -> str:
    if error:
        return error
    points = sum(r.points for r in rows)
    total = sum(r.max_points for r in rows)
    flagged = next(
        (r.message for r in rows if r.message.startswith(("tampered", "not graded"))), ""
    )
    return f"{points:g}/{total:g}" + (f" ({flagged[:90]})" if flagged else "")


def _journal_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.partial")


def _log_path(out: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return out.with_name(f"{out.stem}-{stamp}.log")


def _log(handle, text: str) -> None:
    handle.write(f"{datetime.now(UTC).strftime('%H:%M:%S')} {text}\n")
    handle.flush()
