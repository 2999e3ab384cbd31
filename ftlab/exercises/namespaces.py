"""Linux namespaces for the grading sandbox: can they be built here, and the script that does.

Course tooling, used by `ftlab.exercises.sandbox`. As root with `unshare` and `setpriv`, a
kernel gets new network, PID and mount namespaces: the class's other files are hidden, its
temporary folders are private and small, and it runs as a user id of its own.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def available() -> bool:
    """True when we are root and `unshare`/`setpriv` can build namespaces here (checked once)."""
    global _namespaces
    if _namespaces is None:
        _namespaces = False
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
            probe = ["unshare", "--net", "--pid", "--mount", "--fork", "--mount-proc", "true"]
            try:
                _namespaces = subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _namespaces = False
    return _namespaces


_namespaces: bool | None = None


def closed_to_others(paths=None) -> Path | None:
    """The first folder on the way to this Python or to ftlab that other users cannot enter.

    A sandboxed kernel runs as a bare uid, neither the owner of these files nor in their group,
    so it can start this Python only if every folder on the way lets others through (o+x): a
    virtual environment under a private folder (/root, `mktemp -d`) does not. None when all do.
    """
    package_root = Path(__file__).resolve().parents[2]
    for path in paths or (Path(sys.prefix), Path(sys.executable).parent, package_root):
        path = Path(path).resolve()
        for folder in [*reversed(path.parents), path]:  # from / down to the path itself
            if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH:
                return folder
    return None


def setup_script(copy: Path, work: Path, hide: list[Path], disk_bytes: int, uid: int) -> str:
    """The shell script run as root inside the new namespaces; it ends by exec'ing "$@" as `uid`.

    It hides each path of `hide` (a folder under an empty tmpfs, a file under /dev/null), gives
    /tmp and friends private tmpfs mounts of `disk_bytes`, and copies the submission `copy` into
    the working folder `work`, a tmpfs of its own.
    """
    disk = f"size={disk_bytes // 1024}k"
    lines = ["set -e", "mount --make-rprivate /"]
    needed = [Path(__file__).resolve().parents[2], Path(sys.prefix).resolve()]
    hidden: list[Path] = []
    for path in sorted({Path(p).resolve() for p in hide}, key=lambda p: len(p.parts)):
        if any(p.is_relative_to(path) for p in needed) or any(
            path.is_relative_to(h) for h in hidden
        ):
            continue  # inside a folder already hidden, or holding what the kernel needs
        hidden.append(path)
        if path.is_dir():
            lines.append(f"mount -t tmpfs -o size=4k,mode=000 none {_quote(path)}")
        elif path.exists():
            lines.append(f"mount --bind /dev/null {_quote(path)}")
    for path in PRIVATE_TMP:
        if os.path.isdir(path) and not any(p.is_relative_to(path) for p in needed):
            lines.append(f"mount -t tmpfs -o {disk},mode=1777 none {path}")
    lines.append(f"mount -t tmpfs -o {disk},mode=700,uid={uid},gid={uid} none {_quote(work)}")
    lines.append(f"cp -a {_quote(copy)}/. {_quote(work)}/ && chown -R {uid}:{uid} {_quote(work)}")
    lines.append(f"cd {_quote(work)}")
    drop = f"setpriv --reuid {uid} --regid {uid} --clear-groups --no-new-privs --pdeathsig KILL"
    lines.append(f'exec {drop} --inh-caps=-all --bounding-set=-all "$@"')
    return "\n".join(lines)


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"
