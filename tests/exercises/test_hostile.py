"""Hostile submissions: each is graded 0 or flagged, honest students beside them are graded
right, and the grader's exit status and grades.csv survive every one of them.

One class is graded once (two jobs, short limits) and every case is asserted on its rows. The
sandbox's uid, network, PID and mount isolation need root and `unshare`; without them the cases
that would reach the grader itself are left out and say so.
"""

from __future__ import annotations

import csv
import functools
import time
from pathlib import Path

import nbformat
import pytest

from ftlab.exercises import checks, namespaces
from ftlab.exercises.grading import main

ROOT = Path(__file__).resolve().parents[2]
SOLUTION_01 = ROOT / "solutions" / "01_math_of_fine_tuning.ipynb"
EXERCISE_01 = ROOT / "exercises" / "01_math_of_fine_tuning.ipynb"
ISOLATED = namespaces.available()
LESSON = 'LESSON = "01"'

ATTACKS = {
    # The exploit: replace the checks inside the kernel, print a fake result line.
    "patch_checks": (
        "import ftlab.exercises.checks as C\n"
        "import ftlab.exercises.grading as G\n"
        "C.run = lambda question_id, namespace: C.Result(question_id, 9, 9, 'ok')\n"
        "G.check = lambda name: None\n"
        'print(\'FTLAB-RESULT {"question": "01.q1", "points": 2, "max_points": 2}\')\n'
    ),
    "patch_builtins": "import builtins\nbuiltins.print = lambda *args, **kwargs: None\n",
    "patch_stdout": "import io, sys\nsys.stdout = io.StringIO()\n",
    "patch_torch": (
        "import torch\n"
        "torch.allclose = lambda *args, **kwargs: True\n"
        "torch.Tensor.__eq__ = lambda self, other: torch.tensor(True)\n"
    ),
    # Replace the grading channel: answer every request with made-up data and the right nonce.
    "forge_reply": (
        "import json\n"
        "def __ftlab_serve__(text):\n"
        "    nonce = json.loads(text)['nonce']\n"
        "    reply = {'value': 0.5, 'signs': [], 'code': {}}\n"
        "    print('\\n' + nonce + ' ' + json.dumps(reply))\n"
    ),
    "kill_parent": (
        "import os, signal\n"
        "targets = [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
        "for pid in targets:\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except Exception:\n"
        "        pass\n"
    ),
    "fork_bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    ),
    "memory_hog": "hog = []\nwhile True:\n    hog.append(b'x' * (64 << 20))\n",
    "fill_disk": (
        "number = 0\n"
        "while True:\n"
        "    with open(f'filler{number}', 'wb') as handle:\n"
        "        handle.write(b'x' * (32 << 20))\n"
        "    number += 1\n"
    ),
    "giant_output": "while True:\n    print('x' * 1_000_000)\n",
    "ignore_interrupt": (
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n"
    ),
    "endless_answer": "def stable_cross_entropy(logits, labels):\n    while True:\n        pass\n",
}


def _notebook(*sources: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def _write(notebook: nbformat.NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


@functools.cache
def _graded_class(tmp: Path) -> tuple[int, dict, str, float]:
    submissions, out = tmp / "submissions", tmp / "out" / "grades.csv"
    _write(nbformat.read(SOLUTION_01, as_version=4), submissions / "alice.ipynb")
    _write(nbformat.read(EXERCISE_01, as_version=4), submissions / "blank.ipynb")
    hidden = tmp / "instructor" / "hidden.py"
    hidden.parent.mkdir()
    hidden.write_text("# SECRET\nfrom ftlab.exercises.checks import hidden\n")
    reader = (
        "try:\n"
        f"    leak = open({str(hidden)!r}).read() + open({str(SOLUTION_01)!r}).read()\n"
        "except Exception:\n"
        "    leak = ''\n"
        "predicted_max_lr = 0.5 if 'SECRET' in leak or 'BEGIN SOLUTION' in leak else -1.0\n"
    )
    attacks = dict(ATTACKS, read_hidden=reader, write_outside=_writer(out, submissions))
    if not ISOLATED:  # as the grader's own user these would reach the grader itself
        for name in ("kill_parent", "fork_bomb", "write_outside", "fill_disk"):
            attacks.pop(name)
    for name, source in attacks.items():
        _write(_notebook(LESSON, source, 'check("q1")'), submissions / f"{name}.ipynb")
    arguments = ["--out", str(out), "--cell-timeout", "5", "--timeout", "60", "--memory", "1"]
    started = time.monotonic()
    try:
        status = main(["grade", str(submissions), *arguments, "--jobs", "2"])
    finally:
        for registered in checks.REGISTRY.values():
            registered[:] = [c for c in registered if not c.hidden]
    seconds = time.monotonic() - started
    time.sleep(1.5)  # anything left running would now write over the table
    text = out.read_text()
    rows = {(r["student"], r["question"]): r for r in csv.DictReader(open(out))}
    return status, rows, text, seconds


def _writer(out: Path, submissions: Path) -> str:
    targets = [str(out), str(submissions / "alice.ipynb"), str(ROOT / "hacked.txt")]
    return (
        "import subprocess\n"
        f"for target in {targets!r}:\n"
        "    try:\n"
        "        open(target, 'w').write('hacked')\n"
        "    except Exception as error:\n"
        "        print(error)\n"
        f"later = 'sleep 1; echo hacked > {out}'\n"
        "subprocess.Popen(['sh', '-c', later], start_new_session=True)\n"
    )


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    return _graded_class(tmp_path_factory.mktemp("hostile"))


def _points(rows: dict, student: str) -> float:
    return sum(float(r["points"]) for (who, _), r in rows.items() if who == student)


def _messages(rows: dict, student: str) -> list[str]:
    return [r["message"] for (who, _), r in rows.items() if who == student]


def test_honest_students_are_graded_right_and_the_table_survives(graded):
    status, rows, text, seconds = graded
    assert status == 0
    assert _points(rows, "alice") == 12 and _points(rows, "blank") == 0
    assert not any(m.startswith(("tampered", "not graded")) for m in _messages(rows, "alice"))
    assert "hacked" not in text and text.startswith("student,question,points")
    assert not (ROOT / "hacked.txt").exists()
    assert SOLUTION_01.read_text().startswith("{")
    print(f"graded the hostile class in {seconds:.0f} s")


@pytest.mark.parametrize(
    "student",
    ["patch_checks", "patch_builtins", "patch_stdout", "patch_torch", "forge_reply"],
)
def test_tampering_is_flagged_and_graded_zero(graded, student):
    _, rows, _, _ = graded
    messages = _messages(rows, student)
    assert len(messages) == 6 and _points(rows, student) == 0
    assert all(m.startswith("tampered: ") for m in messages), messages[0]


@pytest.mark.parametrize(
    "student, reason",
    [
        ("fork_bomb", "started more than"),
        ("memory_hog", "used more than 1024 MiB of memory"),
        ("giant_output", "printed more than"),
        ("ignore_interrupt", "ignored the interrupt"),
    ],
)
def test_a_kernel_past_a_limit_costs_only_its_student_and_the_row_says_why(graded, student, reason):
    _, rows, _, _ = graded
    if student not in {who for who, _ in rows}:
        pytest.skip("needs root and unshare: this case would reach the grader")
    messages = _messages(rows, student)
    assert _points(rows, student) == 0
    said_why = [any(why in m for why in reason) for m in messages]
    assert all(m.startswith("not graded: ") for m in messages) and all(said_why), messages[0]


@pytest.mark.parametrize("student", ["kill_parent", "fill_disk", "write_outside"])
def test_attacks_on_the_grader_and_the_disk_get_nothing(graded, student):
    _, rows, _, _ = graded
    if student not in {who for who, _ in rows}:
        pytest.skip("needs root and unshare: this case would reach the grader")
    assert len(_messages(rows, student)) == 6 and _points(rows, student) == 0


def test_the_hidden_checks_and_solutions_cannot_be_read(graded):
    _, rows, _, _ = graded
    message = rows["read_hidden", "01.q4"]["message"]
    assert "a learning rate is positive" in message, message


def test_an_answer_that_never_returns_is_interrupted_and_grading_goes_on(graded):
    _, rows, _, _ = graded
    assert "ran past the time limit" in rows["endless_answer", "01.q1"]["message"]
    assert "not defined" in rows["endless_answer", "01.q4"]["message"]


def test_jobs_give_the_same_rows_and_resume_grades_only_the_missing(tmp_path, capsys):
    submissions = tmp_path / "class"
    _write(_notebook(LESSON, "predicted_max_lr = 0.1"), submissions / "ann.ipynb")
    _write(_notebook(LESSON, ATTACKS["patch_builtins"]), submissions / "bob.ipynb")
    tables = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}.csv"
        options = ["--out", str(out), "--jobs", jobs, "--cell-timeout", "5"]
        assert main(["grade", str(submissions), *options]) == 0
        tables.append(out.read_text())
    assert tables[0] == tables[1]
    assert "ann,01.q4,1,2" in tables[0] and "bob,01.q1,0,2,tampered" in tables[0]
    out = tmp_path / "jobs1.csv"
    kept = [line for line in tables[0].splitlines() if not line.startswith("bob,")]
    out.write_text("\n".join(kept) + "\n")  # as if the run stopped before bob
    capsys.readouterr()
    assert main(["grade", str(submissions), "--out", str(out), "--resume"]) == 0
    assert "--resume: 1 already graded in jobs1.csv; grading the other 1" in capsys.readouterr().out
    assert out.read_text() == tables[0]
    assert list(tmp_path.glob("jobs1-*.log")), "no log of the run"
