"""Start a student's kernel in a sandbox, watch it, and kill its whole process tree. Course tooling.

Used by `ftlab.exercises.kernel` for every graded submission. What is enforced depends on what
the OS allows; `Sandbox.enforced` says it in words, and the grader's log records it:

- always: its own session and process group (setsid); a fresh working folder holding a copy of
  only this submission; limits on address space (memory), CPU time, file size and open files;
  a watchdog that kills the tree when it uses too much memory or runs too many processes; no
  grader secrets in its environment (hidden checks are never sent to the kernel).
- as root with `unshare` and `setpriv` (Linux): a user id of its own (one per parallel slot), so
  it cannot write the output, other submissions or the grader's files, and RLIMIT_NPROC caps
  its processes; new network (no network at all), PID (it cannot see or signal the grader;
  killing its first process ends all of them) and mount namespaces, in which the submissions,
  solutions, output and hidden-check paths are hidden and /tmp, /var/tmp, /dev/shm and its
  working folder are small private tmpfs mounts (a full disk is its own).
- otherwise it runs as the grader's user: files the grader can write, it can write.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.exercises import namespaces

FIRST_UID = 61000  # sandbox users: FIRST_UID + slot; no account is needed for a bare uid


@dataclass
class Limits:
    """Resource limits of one kernel (bytes and seconds)."""

    memory: int = 6 << 30  # memory of the whole tree, shared pages counted once (watchdog)
    address_space: int = 12 << 30  # RLIMIT_AS per process (torch maps ~4 GiB on import)
    cpu_seconds: int = 1800  # RLIMIT_CPU per process
    file_size: int = 256 << 20  # RLIMIT_FSIZE: largest file it may write
    disk: int = 512 << 20  # size of each private tmpfs (working folder, /tmp, ...)
    processes: int = 64  # processes at once (watchdog)
    threads: int = 256  # RLIMIT_NPROC of its own uid: threads and processes (Linux counts both)
    open_files: int = 1024


@dataclass
class Sandbox:
    """A kernel process with its folder; `stop()` kills every process it started."""

    process: subprocess.Popen
    run_dir: Path
    work_dir: Path
    uid: int | None
    limits: Limits
    enforced: list[str] = field(default_factory=list)
    violation: str = ""  # set by `check` when a limit was crossed and the tree killed

    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> str:
        """Kill the tree if it uses too much memory or too many processes; say why, or ''."""
        if self.violation or not self.alive():
            return self.violation
        pids = self.pids()
        resident = sum(_resident_bytes(pid) for pid in pids)
        if resident > self.limits.memory:
            self.violation = f"used more than {self.limits.memory >> 20} MiB of memory"
        elif len(pids) > self.limits.processes:
            self.violation = f"started more than {self.limits.processes} processes"
        if self.violation:
            self.stop()
        return self.violation

    def pids(self) -> list[int]:
        """The processes of this kernel: its uid's, or its session's when it has no uid."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if self.uid is not None:
                    owner = os.stat(f"/proc/{entry}").st_uid == self.uid
                else:
                    owner = os.getsid(int(entry)) == self.process.pid
            except OSError:
                continue
            if owner and not _zombie(entry):
                found.append(int(entry))
        return found

    def stop(self) -> None:
        """Kill the kernel and everything it started, then remove its folder."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # processes fork while we kill: sweep until none
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                pass
            left = self.pids()
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if not left:
                break
            time.sleep(0.1)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.run_dir, ignore_errors=True)


def start(
    command: list[str],
    submission: Path,
    hide: list[Path],
    limits: Limits,
    slot: int = 0,
    prepare=None,
) -> tuple[Sandbox, object]:
    """Start `command` isolated; return the sandbox and what `prepare(folder)` returned.

    `prepare` writes what the command reads (the kernel's connection file) into a folder that
    only the sandbox's user can reach; "{run_dir}" in `command` is replaced by that folder.
    """
    isolated = namespaces.available()
    uid = FIRST_UID + slot if isolated else None
    run_dir, sock, copy, work = _folders(submission, uid)
    prepared = prepare(sock) if prepare else None
    if uid is not None:
        for folder in (sock, copy, work):
            _chown_tree(folder, uid)
    command = [part.replace("{run_dir}", str(sock)) for part in command]
    enforced = ["own session and process group", "copy of only this submission", "rlimits"]
    if isolated:
        script = namespaces.setup_script(copy, work, hide, limits.disk, uid)
        command = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child"] + [
            "--mount-proc", "sh", "-c", script, "sandbox", *command
        ]  # fmt: skip
        enforced += [f"uid {uid}", "no network", "own PID and mount namespaces", "tmpfs"]
    process = subprocess.Popen(
        command,
        cwd="/" if isolated else copy,
        env=_environment(work if isolated else copy),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=_debug_log(),
        preexec_fn=lambda: _limit(limits),
        close_fds=True,
    )
    return Sandbox(process, run_dir, work if isolated else copy, uid, limits, enforced), prepared


def _folders(submission: Path, uid: int | None) -> tuple[Path, Path, Path, Path]:
    # run_dir/sock: connection file and sockets; submission: the copy; work: the kernel's cwd.
    run_dir = Path(tempfile.mkdtemp(prefix="ftlab-grade-", dir=_scratch_root(uid is not None)))
    folders = [run_dir / name for name in ("sock", "submission", "work")]
    for folder in folders:
        folder.mkdir()
    _copy_submission(submission, folders[1])
    if uid is not None:
        os.chmod(run_dir, 0o711)  # the sandbox's uid may pass through, not list or write
    return (run_dir, *folders)


def _limit(limits: Limits) -> None:
    # In the child before exec: a session of its own, a lower priority than the grader's (a
    # busy kernel must not starve the watchdog), then the limits (inherited by all).
    os.setsid()
    _die_with_parent()
    os.nice(10)
    pairs = (
        (resource.RLIMIT_AS, limits.address_space),
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_FSIZE, limits.file_size),
        (resource.RLIMIT_NPROC, limits.threads),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    )
    for which, value in pairs:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass


def _die_with_parent() -> None:
    # Linux: if the grader dies, this process gets SIGKILL (and the kernel's own parent-death
    # signal passes it on), so a killed grader leaves no kernels behind. Only in the grader's
    # main process: in a --jobs worker it killed kernels mid-run (cause not yet understood).
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _environment(work: Path) -> dict:
    # Only what a kernel needs: no grader secrets (FTLAB_HIDDEN_CHECKS, tokens, ...).
    keep = ("PATH", "LANG", "LC_ALL", "FTLAB_PROFILE", "HF_HUB_OFFLINE", "PYTHONPATH")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    package_root = str(Path(__file__).resolve().parents[2])  # the grader's own ftlab
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.update(
        HOME=str(work),
        TMPDIR="/tmp",
        IPYTHONDIR=str(work / ".ipython"),
        MPLCONFIGDIR=str(work / ".matplotlib"),
        JUPYTER_PLATFORM_DIRS="1",
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        HF_HUB_OFFLINE="1",
    )
    return env


def _copy_submission(submission: Path, target: Path) -> None:
    if submission.is_dir():
        shutil.copytree(submission, target, dirs_exist_ok=True, symlinks=True)
    elif submission.exists():
        shutil.copy2(submission, target / submission.name)


def _chown_tree(folder: Path, uid: int) -> None:
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, uid)
    os.chown(folder, uid, uid)


def _debug_log():
    # FTLAB_SANDBOX_LOG=path appends the kernels' own stderr there (to debug the sandbox).
    path = os.environ.get("FTLAB_SANDBOX_LOG")
    return open(path, "ab") if path else subprocess.DEVNULL  # noqa: SIM115


def _zombie(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _resident_bytes(pid: int) -> int:
    # Proportional set size: pages shared after a fork count once, not once per process.
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _scratch_root(isolated: bool) -> str | None:
    # As root, under /run (not world-writable, so the sandbox's private /tmp cannot hide it).
    chosen = os.environ.get("FTLAB_GRADE_SCRATCH")
    if chosen:
        return chosen
    return "/run" if isolated and os.path.isdir("/run") else None
