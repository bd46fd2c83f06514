"""xl console's terminal side: copy the domain's console socket <-> this terminal (raw
mode, Ctrl-] detaches, as xenconsole does) until the domain stops. Lean (no click), so
`xl console` starts fast."""

from __future__ import annotations

import os
import select
import sys
import termios
import time
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as Socket

from pyxen.cli.xlcore import XlError, connect, fail
from pyxen.toolstack.client import HostdError

CTRL_RBRACKET = b"\x1d"  # Ctrl-], xenconsole's escape character
DRAIN_QUIET_S = 0.5  # after a domain stopped, console bytes still in flight

TYPE_CHECKING = False
if TYPE_CHECKING:  # kept out of `xl console`'s start-up
    from pathlib import Path
    from typing import Any


def console_session(domid: int, path: Path | str) -> int:
    """Copy console <-> terminal until the domain stops or the user detaches (Ctrl-]).

    Returns the exit status: 0 unless the domain crashed.
    """
    sock = None
    for _ in range(50):
        s = Socket(AF_UNIX, SOCK_STREAM)
        try:
            s.connect(str(path))
            sock = s
            break
        except OSError:
            s.close()
            time.sleep(0.05)
    if sock is None:
        fail(f"unable to attach to the console of domain {domid}: {path} does not accept")
    waiter = connect()
    waiter.send("wait", domid=domid)

    stdin_fd = sys.stdin.fileno() if sys.stdin is not None else -1
    interactive = stdin_fd >= 0 and os.isatty(stdin_fd)
    saved = None
    if interactive:
        saved = termios.tcgetattr(stdin_fd)
        raw = termios.tcgetattr(stdin_fd)
        raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP
                    | termios.IXON)
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(stdin_fd, termios.TCSAFLUSH, raw)  # output processing stays on
    out = sys.stdout.buffer
    reason: str | None = None
    read_stdin = stdin_fd >= 0
    waiting = True  # hostd may die (and restart) under us: the console is the VMM's
    try:
        while True:
            rlist = [sock] + ([waiter.sock] if waiting else []) \
                + ([stdin_fd] if read_stdin else [])
            ready, _, _ = select.select(rlist, [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                out.write(data)
                out.flush()
            if read_stdin and stdin_fd in ready:
                data = os.read(stdin_fd, 4096)
                if not data:
                    read_stdin = False
                elif interactive and CTRL_RBRACKET in data:
                    before = data.split(CTRL_RBRACKET, 1)[0]
                    if before:
                        sock.sendall(before)
                    reason = "detached"
                    break
                else:
                    try:
                        sock.sendall(data)
                    except OSError:
                        pass
            if waiting and waiter.sock in ready:
                try:
                    reason = str(waiter.read_reply().get("reason"))
                except (HostdError, ValueError, OSError):
                    waiting = False  # hostd went away; the console closing says the rest
                    continue
                _drain(sock, out)
                break
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        sock.close()
        waiter.close()
    if reason is None:  # console closed first: the domain was destroyed
        try:
            with connect() as c:
                reason = str(c.request("wait", domid=domid).get("reason"))
        except (XlError, HostdError):
            reason = "gone"
    return 1 if reason in ("crash", "watchdog") else 0


def _drain(sock: Socket, out: Any) -> None:
    """Copy what the console still holds, until it closes or stays quiet a moment."""
    while True:
        ready, _, _ = select.select([sock], [], [], DRAIN_QUIET_S)
        if not ready:
            return
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        out.write(data)
        out.flush()
