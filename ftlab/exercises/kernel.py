"""Run a planned submission in a fresh kernel, cell by cell, with time limits. Course tooling.

Used by `ftlab.exercises.grade`: the plan is the submission's cells with check cells in place; each
check prints one `MARKER` line of JSON, read back from the cell's output.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import nbformat

MARKER = "FTLAB-RESULT "
SETUP_TIMEOUT = 300  # seconds for the grader's setup cell (imports torch) in a fresh kernel


class GradingError(RuntimeError):
    """Grading itself failed (no kernel, unwritable output), not a student's notebook."""


@dataclass
@dataclass
class Run:
    """What running a planned notebook left: errors by cell, results by question, why it stopped."""

    errors: dict[int, str] = field(default_factory=dict)  # planned index -> "Type: message"
    results: dict[str, dict] = field(default_factory=dict)
    stopped: str = ""  # why execution stopped early
    stopped_at: int | None = None


def execute(plan: list, timeout: float, cell_timeout: float) -> Run:
    """Run the planned cells (`.source`, `.grades`) in a new kernel; return what happened."""
    cells = [nbformat.v4.new_code_cell(planned.source) for planned in plan]
    run, replies = Run(), {}
    with tempfile.TemporaryDirectory(prefix="ftlab-grade-") as workdir:
        client = client_for(nbformat.v4.new_notebook(cells=cells), workdir, replies)
        try:
            with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
                run_cells(client, plan, run, replies, timeout, cell_timeout)
        except Exception as error:
            if not replies:
                message = f"cannot run a Python kernel: {type(error).__name__}: {error}"
                raise GradingError(message) from error
            run.stopped = run.stopped or f"the kernel failed: {type(error).__name__}: {error}"
    if 0 in run.errors:
        raise GradingError(f"the grader's setup cell failed in the kernel: {run.errors[0]}")
    return run


def client_for(notebook, workdir: str, replies: dict):
    """An nbclient client that keeps going after errors and records each cell's reply."""
    from nbclient import NotebookClient

    client = NotebookClient(
        notebook,
        kernel_name="python3",
        allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={"ename": "Timeout", "evalue": "", "traceback": []},
        resources={"metadata": {"path": workdir}},
    )
    client.on_cell_executed = lambda cell, cell_index, execute_reply: replies.update(
        {cell_index: execute_reply}
    )
    return client


def run_cells(client, plan, run: Run, replies: dict, timeout: float, cell_timeout: float):
    """Execute cell by cell; the notebook's time limit starts after the setup cell."""
    from nbclient.exceptions import DeadKernelError

    deadline = math.inf  # the notebook's time starts after the grader's own setup cell
    for index, cell in enumerate(client.nb.cells):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            run.stopped, run.stopped_at = f"the notebook ran past its {timeout:g} s limit", index
            return
        client.timeout = max(1, math.ceil(min(cell_timeout, remaining) if index else SETUP_TIMEOUT))
        message = f"the cell ran longer than {client.timeout} s and was interrupted"
        client.error_on_timeout["evalue"] = message
        try:
            client.execute_cell(cell, index)
        except DeadKernelError:
            run.stopped, run.stopped_at = "the kernel died (a crash or exit)", index
            run.errors[index] = "KernelDied: the kernel process ended"
            return
        content = replies.get(index, {}).get("content", {})
        if content.get("status") == "error":
            run.errors[index] = f"{content.get('ename')}: {content.get('evalue')}".rstrip(": ")
        result = result_in(cell)
        if plan[index].grades and result:
            run.results[plan[index].grades] = result
        if index == 0:
            deadline = time.monotonic() + timeout


def result_in(cell) -> dict | None:
    """The last check result a cell printed (a MARKER line of JSON), or None."""
    lines = [
        line
        for output in cell.outputs
        if output.get("output_type") == "stream" and output.get("name") == "stdout"
        for line in output.get("text", "").splitlines()
        if line.startswith(MARKER)
    ]
    return json.loads(lines[-1][len(MARKER) :]) if lines else None
