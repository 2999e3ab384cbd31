"""Run cells in a student's sandboxed kernel, one at a time, under time and output limits.

Used by `ftlab.exercises.grade`. The kernel is an ordinary IPython kernel started inside
`ftlab.exercises.sandbox` and spoken to over Unix sockets in its private folder (it may have no
network at all). A cell past its time limit is interrupted; a kernel that ignores the interrupt,
prints more than the output limit, or crosses a sandbox limit is killed with its whole tree, and
`Outcome.stopped` says why. Course tooling.
"""

from __future__ import annotations

import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ftlab.exercises import sandbox

STARTUP_TIMEOUT = 120  # seconds for a fresh kernel to answer
INTERRUPT_GRACE = 5  # seconds a cell gets to stop after an interrupt
OUTPUT_LIMIT = 16 << 20  # bytes of output a submission may print in all


class GradingError(RuntimeError):
    """Grading itself failed (no kernel, unwritable output), not a student's notebook."""


@dataclass
class Outcome:
    """What running one cell left."""

    error: str = ""  # "Type: message" when the cell raised
    timed_out: bool = False
    stopped: str = ""  # why the kernel is gone: it died, crossed a limit, or would not stop
    reply: str | None = None  # for a grading request: the text after its nonce


class Kernel:
    """One student's kernel in its sandbox; `close()` kills it and everything it started."""

    def __init__(self, submission: Path, hide: list[Path], limits: sandbox.Limits, slot: int = 0):
        from jupyter_client import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        def connect(folder: Path) -> dict:
            _, info = write_connection_file(
                str(folder / "kernel.json"), transport="ipc", ip=str(folder / "k")
            )
            return info

        command = [sys.executable, "-m", "ipykernel_launcher", "-f", "{run_dir}/kernel.json"]
        self.sandbox, info = sandbox.start(command, submission, hide, limits, slot, connect)
        self.printed, self.stopped = 0, ""
        self.client = BlockingKernelClient()
        self.client.load_connection_info(info)
        self.client.start_channels()
        if not self._wait_for_ready():
            self.close()
            raise GradingError("cannot start a Python kernel (it did not answer)")

    def _wait_for_ready(self) -> bool:
        # Like jupyter_client's wait_for_ready, without trusting an early heartbeat.
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and self.sandbox.alive():
            message_id = self.client.kernel_info()
            asked = time.monotonic()
            while time.monotonic() - asked < 2:
                try:
                    reply = self.client.get_shell_msg(timeout=0.5)
                except queue.Empty:
                    continue
                if reply.get("parent_header", {}).get("msg_id") == message_id:
                    self._drain_iopub()
                    return True
        return False

    def _drain_iopub(self) -> None:
        while True:
            try:
                self.client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                return

    def run(self, code: str, timeout: float, nonce: str | None = None) -> Outcome:
        """Execute one cell; wait at most `timeout` seconds, then interrupt it."""
        outcome = Outcome(stopped=self.stopped)
        if self.stopped:
            return outcome
        message_id = self.client.execute(code, store_history=True, allow_stdin=False)
        deadline, interrupted, idle, replied = time.monotonic() + timeout, False, False, False
        while not (idle and replied):
            if self._stop_reason():
                outcome.stopped = self.stopped
                return outcome
            if time.monotonic() > deadline:
                if interrupted:
                    self._stop(f"a cell ran past {timeout:g} s and ignored the interrupt")
                    outcome.stopped = self.stopped
                    return outcome
                outcome.timed_out, interrupted = True, True
                self._interrupt()
                deadline = time.monotonic() + INTERRUPT_GRACE
            idle = self._read_iopub(message_id, outcome, nonce) or idle
            replied = replied or self._shell_replied(message_id)
        return outcome

    def _read_iopub(self, message_id: str, outcome: Outcome, nonce: str | None) -> bool:
        try:
            message = self.client.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            return False
        content, kind = message.get("content", {}), message.get("msg_type")
        text = content.get("text", "") if kind == "stream" else ""
        if kind in ("display_data", "execute_result", "update_display_data"):
            text = str(content.get("data", ""))
        self.printed += len(text)
        if self.printed > OUTPUT_LIMIT:
            self._stop(f"printed more than {OUTPUT_LIMIT >> 20} MB")
        if kind == "stream" and nonce and f"\n{nonce} " in text:  # the nonce is enough
            line = text.split(f"\n{nonce} ", 1)[1].split("\n", 1)[0]
            outcome.reply = line if outcome.reply is None else ""  # two replies: forged
        if message.get("parent_header", {}).get("msg_id") != message_id:
            return False
        if kind == "error":
            outcome.error = f"{content.get('ename')}: {content.get('evalue')}".rstrip(": ")[:300]
        return kind == "status" and content.get("execution_state") == "idle"

    def _shell_replied(self, message_id: str) -> bool:
        try:
            message = self.client.get_shell_msg(timeout=0)
        except queue.Empty:
            return False
        return message.get("parent_header", {}).get("msg_id") == message_id

    def _interrupt(self) -> None:
        message = self.client.session.msg("interrupt_request", {})
        self.client.control_channel.send(message)

    def _stop_reason(self) -> str:
        if not self.stopped:
            violation = self.sandbox.check()
            if violation:
                self.stopped = violation
            elif not self.sandbox.alive():
                self.stopped = "the kernel died (a crash, an exit or a CPU-time limit)"
        return self.stopped

    def _stop(self, reason: str) -> None:
        self.stopped = self.stopped or reason
        self.sandbox.stop()

    def close(self) -> None:
        """Kill the kernel's whole process tree and remove its folder."""
        try:
            self.client.stop_channels()
        finally:
            self.sandbox.stop()
