"""xenstored as its own process, so that it (and every guest's xenstore ring) outlives hostd.

hostd starts ``python -m pyxen.xenstore --state-dir $RUNDIR/xenstored --rundir $RUNDIR``
in a session of its own (as C xenstored runs apart from xl/libxl), or finds the one a
previous hostd started still serving, and then talks to it as a dom0 client only.
Its pid is in $RUNDIR/xenstored/pid; hostd's normal stop ends it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pyxen import paths
from pyxen.toolstack.procs import alive as _alive

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _accepts(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pid_file(root: Path) -> Path:
    return root / "xenstored" / "pid"


def read_pid(root: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file(root).read_text())
    return None


def start_or_adopt(root: Path) -> tuple[int | None, bool]:
    """Returns (pid, adopted): the running xenstored of this rundir, else a new one."""
    sock = paths.xenstored_socket(root)
    if _accepts(sock):
        return read_pid(root), True
    state_dir = root / "xenstored"
    state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYXEN_RUNDIR=str(root))
    with open(root / "xenstored.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyxen.xenstore", "--state-dir", str(state_dir),
             "--rundir", str(root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            start_new_session=True, cwd="/")
    pid_file(root).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _accepts(sock):
        if proc.poll() is not None:
            raise OSError(f"xenstored exited with status {proc.returncode} "
                          f"(see {root / 'xenstored.log'})")
        if time.monotonic() > deadline:
            proc.kill()
            raise OSError("xenstored did not start serving")
        time.sleep(0.02)
    return proc.pid, False


def stop(root: Path, pid: int | None) -> None:
    """SIGTERM, then wait (it persists its tree and removes its sockets)."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    with contextlib.suppress(FileNotFoundError):
        pid_file(root).unlink()


class XsDomains:
    """What hostd asks xenstored about domains, over the wire (it was in-process calls)."""

    def __init__(self, xs: object) -> None:
        self.xs = xs

    def introduce_domain(self, domid: int, *, gfn: int = 0, port: int = 0) -> None:
        self.xs.introduce(domid, gfn, port)  # type: ignore[attr-defined]

    def is_domain_introduced(self, domid: int) -> bool:
        return bool(self.xs.is_domain_introduced(domid))  # type: ignore[attr-defined]

    def release_domain(self, domid: int) -> None:
        self.xs.release(domid)  # type: ignore[attr-defined]

    def fire_release_domain_watch(self, domid: int) -> None:
        self.xs.control("domain-exc", str(domid))  # type: ignore[attr-defined]
