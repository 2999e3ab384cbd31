"""Tests of the exercise machinery: markers, generation, check(), hidden checks, CLI, grading."""

from __future__ import annotations

import csv
import linecache
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest
import torch

from ftlab.exercises import checks, namespaces
from ftlab.exercises.build import hidden_tests, make_exercise, strip_markers, validate_solution
from ftlab.exercises.checks.lesson01 import adam_reference
from ftlab.exercises.grading import CheckFailed, main, question_id_of

ROOT = Path(__file__).resolve().parents[2]
SOLUTION_01 = ROOT / "solutions" / "01_math_of_fine_tuning.ipynb"
GOOD_LOSS = """
def stable_cross_entropy(logits, labels):
    shifted = logits - logits.max(dim=1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    return -log_probs[torch.arange(len(labels)), labels].mean()
"""


def test_strip_markers_replaces_answers_with_an_indented_stub_and_drops_hidden_tests():
    source = (
        "def f(x):\n"
        '    """Doc."""\n'
        "    ### BEGIN SOLUTION\n"
        "    return x + 1\n"
        "    ### END SOLUTION\n"
        "check('q1')\n"
        "### BEGIN HIDDEN TESTS\n"
        "assert f(1) == 2\n"
        "### END HIDDEN TESTS"
    )
    stripped = strip_markers(source)
    stub = "    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    assert stripped == 'def f(x):\n    """Doc."""\n' + stub + "check('q1')"
    assert hidden_tests(source) == "assert f(1) == 2"
    markdown = "Answer:\n### BEGIN SOLUTION\nIt is 2.\n### END SOLUTION"
    assert strip_markers(markdown, "markdown") == "Answer:\nYOUR ANSWER HERE"


@pytest.mark.parametrize(
    "source, complaint",
    [
        ("### BEGIN SOLUTION\nx = 1", "line 1: ### BEGIN SOLUTION is never closed"),
        ("x = 1\n### END SOLUTION", "line 2: ### END SOLUTION without ### BEGIN SOLUTION"),
        ("### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS", "line 2: ### BEGIN HIDDEN TESTS inside"),
        ("### BEGIN HIDDEN TESTS\n### END SOLUTION", "### END SOLUTION without"),
    ],
)
def test_strip_markers_names_the_line_of_an_unbalanced_marker(source, complaint):
    with pytest.raises(ValueError, match=complaint):
        strip_markers(source, where="cell 3")


def test_make_exercise_strips_answers_outputs_and_points_its_badge_at_itself():
    solution = nbformat.read(SOLUTION_01, as_version=4)
    exercise = make_exercise(solution, "exercises/01_math_of_fine_tuning.ipynb")
    text = nbformat.writes(exercise)
    assert "logits.max(dim=1, keepdim=True)" not in text  # the answer is gone
    assert "BEGIN HIDDEN TESTS" not in text and "uniform logits" not in text
    assert "raise NotImplementedError()" in text
    assert "blob/main/exercises/01_math_of_fine_tuning.ipynb" in exercise.cells[0].source
    code_cells = [c for c in exercise.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code_cells)
    assert exercise.metadata["ftlab"]["lesson"] == "01"
    graded = [c.metadata["nbgrader"]["grade_id"] for c in code_cells if "nbgrader" in c.metadata]
    assert "q1" in graded and "q1_answer" in graded  # nbgrader metadata survives
    assert solution.cells[0].source != exercise.cells[0].source  # the source is untouched


def test_validate_solution_finds_missing_check_cells_wrong_points_and_bare_answers():
    solution = nbformat.read(SOLUTION_01, as_version=4)
    assert validate_solution(solution, "01", "s") == []
    broken = nbformat.read(SOLUTION_01, as_version=4)
    broken.cells = [c for c in broken.cells if not c.source.startswith('check("q2")')]
    q3 = next(c for c in broken.cells if c.source.startswith('check("q3")'))
    q3.metadata["nbgrader"]["points"] = 5
    answer = next(c for c in broken.cells if "def adam_step" in c.source)
    del answer.metadata["nbgrader"]
    problems = "\n".join(validate_solution(broken, "01", "s"))
    assert "no check cell for 01.q2" in problems
    assert "points 5 but the checks of 01.q3 are worth 2" in problems
    assert "answer cell without nbgrader solution metadata" in problems


def test_question_id_of_needs_the_lesson_and_says_where_it_comes_from():
    assert question_id_of("q3", "01") == "01.q3"
    assert question_id_of("02.q1", None) == "02.q1"
    with pytest.raises(ValueError, match='sets LESSON = "01"'):
        question_id_of("q1", None)
    with pytest.raises(ValueError, match="named like 'q1'"):
        question_id_of("question one", "01")


def test_check_reads_the_callers_namespace_prints_on_success_and_raises_on_failure(capsys):
    namespace = {"LESSON": "01", "torch": torch}
    exec("from ftlab.exercises.grading import check" + GOOD_LOSS, namespace)
    exec('check("q1")', namespace)
    assert "✓ 01.q1 passed (2/2)" in capsys.readouterr().out
    exec("def stable_cross_entropy(logits, labels):\n    raise NotImplementedError()", namespace)
    with pytest.raises(CheckFailed) as failure:
        exec('check("q1")', namespace)
    rendered = failure.value._render_traceback_()[0]
    assert "✗ 01.q1 (0/2)" in rendered and "still raises NotImplementedError" in rendered


def test_run_rejects_unknown_questions_and_lessons_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"no question 'q99'; it has \['01.q1'"):
        checks.run("01.q99", {})
    with pytest.raises(ValueError, match="no checks for lesson 42; lessons with checks"):
        checks.questions("42")


def test_checks_leave_the_students_random_state_alone():
    namespace = {"torch": torch}
    exec(GOOD_LOSS, namespace)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    checks.run("01.q1", namespace)
    assert torch.equal(torch.rand(3), expected)


def test_a_crash_inside_the_students_function_is_reported_with_its_line():
    source = "def stable_cross_entropy(logits, labels):\n    return logits.nope()\n"
    linecache.cache["<cell 7>"] = (len(source), None, source.splitlines(True), "<cell 7>")
    namespace = {"torch": torch}
    exec(compile(source, "<cell 7>", "exec"), namespace)  # as Jupyter does: source in linecache
    result = checks.run("01.q1", namespace)
    assert not result.passed
    assert "raised AttributeError" in result.message
    assert "in your line `return logits.nope()`" in result.message


def test_hidden_checks_add_points_and_reloading_does_not_duplicate_them(tmp_path, monkeypatch):
    hidden = tmp_path / "hidden.py"
    hidden.write_text(
        "from ftlab.exercises.checks import Wrong, hidden\n\n"
        '@hidden("01.q1", points=3)\n'
        "def batch_of_one(namespace):\n"
        "    raise Wrong('hidden: try a batch of one')\n"
    )
    namespace = {"torch": torch}
    exec(GOOD_LOSS, namespace)
    try:
        assert checks.load_hidden(hidden) == 1
        assert checks.load_hidden(hidden) == 1  # replaced, not added twice
        result = checks.run("01.q1", namespace)
        assert (result.points, result.max_points) == (2, 5)
        assert result.message == "hidden: try a batch of one"
        assert checks.max_points("01.q1", hidden=False) == 2
    finally:
        for registered in checks.REGISTRY.values():
            registered[:] = [c for c in registered if not c.hidden]
    assert checks.run("01.q1", namespace).passed


def test_adam_reference_of_the_checks_matches_torch_optim_adam():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = torch.optim.Adam([param], lr=0.1)
    mine, m, v = param.detach().clone(), torch.zeros(3), torch.zeros(3)
    for step in (1, 2, 3):
        grad = torch.tensor([0.3, -1.0, 2.0]) * step
        param.grad = grad.clone()
        optimizer.step()
        mine, m, v = adam_reference(mine, grad, m, v, step, lr=0.1)
        assert torch.allclose(mine, param.detach(), atol=1e-6)
        assert torch.allclose(m, optimizer.state[param]["exp_avg"])


def test_main_reports_bad_usage_with_exit_code_2(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "missing")]) == 2
    assert "is not a folder of submissions" in capsys.readouterr().out
    assert main(["grade", str(tmp_path)]) == 2  # empty folder
    assert main(["build", "--solutions", str(tmp_path)]) == 2
    assert main(["build", "--hidden", str(tmp_path / "none.py")]) == 2
    assert main(["frobnicate"]) == 2


def test_a_python_the_sandbox_cannot_reach_is_named_before_grading(tmp_path, monkeypatch, capsys):
    with tempfile.TemporaryDirectory() as base:  # not under pytest's own folder, which is 0o700
        Path(base).chmod(0o755)
        private = Path(base).resolve() / "private"
        (private / "venv" / "bin").mkdir(parents=True)
        private.chmod(0o700)  # like /root or `mktemp -d`: the sandbox's uid cannot pass
        assert namespaces.closed_to_others([private / "venv"]) == private
        private.chmod(0o755)
        assert namespaces.closed_to_others([private / "venv"]) is None

    monkeypatch.setattr(namespaces, "available", lambda: True)
    monkeypatch.setattr(namespaces, "closed_to_others", lambda: private)
    (tmp_path / "class" / "ann").mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "class" / "ann" / "01_x.ipynb")
    assert main(["grade", str(tmp_path / "class"), "--out", str(tmp_path / "g.csv")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"chmod o+x {private}" in err
    assert not (tmp_path / "g.csv").exists()  # nothing half-written


def test_build_writes_exercises_and_check_detects_when_they_are_stale(tmp_path, capsys):
    solutions, exercises = tmp_path / "solutions", tmp_path / "exercises"
    solutions.mkdir()
    shutil.copy(SOLUTION_01, solutions)
    options = ["--solutions", str(solutions), "--exercises", str(exercises), "--no-run"]
    assert main(["build", "--check", *options]) == 1
    assert "out of sync" in capsys.readouterr().out
    assert main(["build", *options]) == 0
    assert main(["build", "--check", *options]) == 0
    (exercises / SOLUTION_01.name).write_text("{}")
    assert main(["build", "--check", *options]) == 1


def _write(notebook: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def _edited(edit) -> nbformat.NotebookNode:
    notebook = nbformat.read(SOLUTION_01, as_version=4)
    notebook.cells = [cell for cell in notebook.cells if edit(cell) is not False]
    return notebook


def test_build_refuses_to_write_when_a_check_fails_on_the_solution(tmp_path, capsys):
    def break_q6(cell):
        cell.source = cell.source.replace("(mlp[0], mlp[2])", "(mlp[0], mlp[4])")

    _write(_edited(break_q6), tmp_path / "solutions" / SOLUTION_01.name)
    exercises = tmp_path / "exercises"
    arguments = ["--solutions", str(tmp_path / "solutions"), "--exercises", str(exercises)]
    assert main(["build", *arguments]) == 1
    out = capsys.readouterr().out
    assert "01.q6 fails: 2 parameters of the head (mlp[4]) are frozen" in out
    assert "refusing to write" in out and not exercises.exists()


def test_grade_a_class_with_good_broken_and_hanging_submissions(tmp_path, capsys):
    submissions = tmp_path / "submissions"
    _write(nbformat.read(SOLUTION_01, as_version=4), submissions / "alice.ipynb")

    def break_erin(cell):
        if cell.source.startswith('check("q2")'):
            return False  # a deleted check cell
        if cell.source.startswith("# Try it: a naive"):
            cell.source = "print(1 / 0)"  # an exception in q1's section
        if "def adam_step" in cell.source:
            cell.source = "while True:\n    pass\n" + cell.source  # hangs
        return True

    _write(_edited(break_erin), submissions / "erin.ipynb")

    _write(nbformat.v4.new_notebook(), submissions / "frank" / "notes.ipynb")  # no lesson
    (submissions / "zoe").mkdir()
    (submissions / "zoe" / "readme.txt").write_text("forgot the notebook")
    (submissions / "carol.ipynb").write_text('{"cells": [')
    (submissions / "dave.txt").write_text("hello")
    solutions = tmp_path / "solutions"  # the instructor's source, with a hidden test for q4

    def hide_q4_test(cell):
        if cell.source.startswith('check("q4")'):
            cell.source += (
                "\n### BEGIN HIDDEN TESTS\nassert critical_lr < 0, 'nope'\n### END HIDDEN TESTS"
            )

    _write(_edited(hide_q4_test), solutions / SOLUTION_01.name)
    hidden = tmp_path / "hidden.py"
    hidden.write_text(
        "from ftlab.exercises.checks import Wrong, hidden\n\n"
        '@hidden("01.q6", points=1)\n'
        "def counted_twice(namespace):\n"
        "    raise Wrong('hidden check says no')\n"
    )
    out = tmp_path / "grades.csv"
    arguments = ["--out", str(out), "--cell-timeout", "10", "--solutions", str(solutions)]
    try:
        assert main(["grade", str(submissions), *arguments, "--hidden", str(hidden)]) == 0
    finally:
        for registered in checks.REGISTRY.values():
            registered[:] = [c for c in registered if not c.hidden]
    printed = capsys.readouterr().out
    rows = {(r["student"], r["question"]): r for r in csv.DictReader(open(out))}
    alice = {q: rows["alice", f"01.{q}"] for q in ("q1", "q2", "q3", "q4", "q5", "q6")}
    assert [alice[q]["points"] for q in ("q1", "q2", "q3", "q5")] == ["2", "2", "2", "2"]
    assert (
        alice["q4"]["points"] == "0"
        and "hidden test failed: AssertionError: nope" in alice["q4"]["message"]
    )
    assert (alice["q6"]["points"], alice["q6"]["max_points"]) == ("2", "3")
    assert alice["q6"]["message"] == "hidden check says no"
    assert rows["erin", "01.q1"]["points"] == "2"  # an error that breaks nothing costs nothing
    assert rows["erin", "01.q2"]["points"] == "2"
    assert "check cell was deleted" in rows["erin", "01.q2"]["message"]
    assert rows["erin", "01.q3"]["points"] == "0"
    assert "ran longer than 10 s and was interrupted" in rows["erin", "01.q3"]["message"]
    assert rows["erin", "01.q5"]["points"] == "2"  # grading went on after the hang
    assert "corrupt notebook" in rows["carol", "-"]["message"]
    assert "not a notebook: dave.txt" in rows["dave", "-"]["message"]
    assert "cannot tell the lesson" in rows["frank", "-"]["message"]
    assert "no notebook (.ipynb) in this folder" in rows["zoe", "-"]["message"]
    assert any("alice" in line and "10/13" in line for line in printed.splitlines())


def test_a_notebook_past_its_time_limit_and_a_dead_kernel_are_reported(tmp_path):
    def notebook(*cells):
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])

    submissions = tmp_path / "submissions"
    _write(notebook('LESSON = "01"', "import time", "time.sleep(60)"), submissions / "slow.ipynb")
    crash = notebook('LESSON = "01"', "import os\nos._exit(1)", 'check("q1")')
    _write(crash, submissions / "crash.ipynb")
    out = tmp_path / "grades.csv"
    assert main(["grade", str(submissions), "--out", str(out), "--timeout", "3"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 and all(row["points"] == "0" for row in rows)
    slow, crashed = rows[6], rows[0]
    assert slow["message"].startswith("not graded: the notebook ran past its 3 s limit")
    assert "cell 3 (`time.sleep(60)`) raised Timeout" in slow["message"]
    assert crashed["message"].startswith("not graded: the kernel died")
    assert "cell 2 (`import os`) raised KernelDied" in crashed["message"]
