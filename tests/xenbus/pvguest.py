"""Helpers of the xenbus suite: PV guests (guests/hello.c mode=xenbus, badconsole,
xsflood) created through the real `xl` of a test host (tests/toolstack/xlhost.py), and
`xl console` driven through a pseudo-terminal, as a person types into it."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from xlhost import HELLO, REPO, Host

CTRL_RBRACKET = "\x1d"


def create(host: Host, name: str, mode: str, *, paused: bool = False,
           test_value: str | None = None) -> int:
    """xl create a PV test guest; with test_value, data/test is written before it runs."""
    cfg = host.root.parent / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\ntype = "pvh"\nmemory = 32\nkernel = "{HELLO}"\n'
                   f'cmdline = "mode={mode}"\non_poweroff = "destroy"\n')
    host.xl("create", "-p", str(cfg), check=True)
    domid = int(host.list()[name]["id"])
    if test_value is not None:
        r = host.xenstore("xenstore-write", f"/local/domain/{domid}/data/test", test_value)
        assert r.returncode == 0, r.stderr
    if not paused:
        host.xl("unpause", name, check=True)
    return domid


class XlConsole:
    """`xl console NAME` on a pseudo-terminal (os.openpty): expect() its output, type()
    into it, detach() with Ctrl-], as a person at a terminal would."""

    def __init__(self, host: Host, name: str) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "pyxen.cli.xl", "console", name],
                                     cwd=str(REPO), env=host.env, stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True)
        os.close(slave)
        self.buf = ""
        self.pos = 0  # expect() searches after the previous match
        self.eof = False

    def _read(self, timeout: float) -> None:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the other side is closed
            data = b""
        if not data:
            self.eof = True
        self.buf += data.decode("utf-8", "replace")

    def expect(self, pattern: str, timeout: float = 60) -> str:
        """Wait for output matching the regex; returns the matched text."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m.group(0)
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError(f"xl console: no {pattern!r} in:\n{self.buf[-3000:]}")
            self._read(min(left, 0.5))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_exit(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        rc = self.proc.wait(max(0.1, deadline - time.monotonic()))
        self.close()
        return rc

    def detach(self) -> int:
        self.type(CTRL_RBRACKET)
        return self.wait_exit(20)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def dmesg(host: Host) -> str:
    return host.xl("dmesg", check=True).stdout


def xenstored_resources(host: Host, domid: int) -> tuple[int, int]:
    """(eventfds open in xenstored, its mappings of domain domid's xenstore page):
    xenstored is its own process, apart from hostd (toolstack/xenstored.py)."""
    pid = host.xenstored_pid()
    assert pid is not None
    fds = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventfd]":
                fds += 1
        except OSError:
            pass
    maps = Path(f"/proc/{pid}/maps").read_text()
    return fds, len(re.findall(rf"memfd:pyxen-d{domid}-xenstore\b", maps))


def wait_until(pred, what: str, timeout: float = 30):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
