"""xl's side of the hostd socket: JSON lines, one request and one reply per line.

Also starts hostd on first use, as the contract in docs/internals.md says: double fork,
new session, output to $RUNDIR/hostd.log, then wait until pyxend.sock accepts.
"""

from __future__ import annotations

import itertools
import os
import sys

# The C socket type: the socket module's wrapper imports enum, selectors and functools,
# a good part of `xl list`'s start-up; a hostd connection needs none of it.
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as Socket

from pyxen.toolstack import jsonline

TYPE_CHECKING = False
if TYPE_CHECKING:  # kept out of xl's start-up (cli/xlmain.py's fast path)
    from pathlib import Path
    from typing import Any

START_TIMEOUT_S = 60.0


class HostdError(Exception):
    """hostd answered with an error (its text is the one line shown to the user)."""


class HostdClient:
    """A connection to hostd; requests are sequential on one connection."""

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.trace: Any = None  # called with (op, args) before each request (xl -v)
        self._ids = itertools.count(1)
        self._buf = b""

    @classmethod
    def connect(cls, rundir: Path | None = None, autostart: bool = True) -> HostdClient:
        if rundir is None:  # the common case, without pathlib (xl's start-up time)
            sock = _try_connect(os.path.join(os.environ.get("PYXEN_RUNDIR", "/run/pyxen"),
                                             "pyxend.sock"))
            if sock is not None:
                return cls(sock)
        import fcntl

        from pyxen import paths
        root = rundir or paths.rundir()
        path = paths.hostd_socket(root)
        sock = _try_connect(path)
        if sock is None:
            if not autostart:
                raise HostdError(f"hostd is not running (no {path})")
            root.mkdir(parents=True, exist_ok=True)
            # One starter at a time: the others find the socket when they get the lock.
            with open(root / "start.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                sock = _try_connect(path) or start_hostd(root)
        return cls(sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> HostdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, op: str, **args: Any) -> int:
        if self.trace is not None:
            self.trace(op, args)
        rid = next(self._ids)
        msg = {"id": rid, "op": op, **args}
        self.sock.sendall(jsonline.dumps(msg).encode() + b"\n")
        return rid

    def read_reply(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                from pyxen import paths
                raise HostdError("hostd closed the connection (see "
                                 f"{paths.rundir() / 'hostd.log'})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return jsonline.loads(line)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        reply = self.read_reply()
        if not reply.get("ok"):
            raise HostdError(reply.get("error") or f"{op} failed")
        return reply


def _try_connect(path: Path | str) -> Socket | None:
    sock = Socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def start_hostd(root: Path) -> Socket:
    """Start hostd detached from this process (double fork) and connect to it."""
    import time

    from pyxen import paths
    root.mkdir(parents=True, exist_ok=True)
    log = root / "hostd.log"
    env = dict(os.environ, PYXEN_RUNDIR=str(root))
    pid = os.fork()
    if pid == 0:  # child: new session, fork again so hostd is nobody's child
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir("/")
            os.execve(sys.executable,
                      [sys.executable, "-m", "pyxen.toolstack.hostd"], env)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)
    path = paths.hostd_socket(root)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        sock = _try_connect(path)
        if sock is not None:
            return sock
        time.sleep(0.05)
    raise HostdError(f"hostd did not start: {last_line(log) or 'no output'} (see {log})")


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""

