"""Helpers of the VMM suite: the domain process started through its real entry point and
contract (docs/internals.md), and a client of its control and console sockets."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests"
BUILD = GUESTS / "build"


def vmm_env(rundir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYXEN_RUNDIR=str(rundir), **extra)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def spawn_vmm(rundir: Path, domid: int, config: dict[str, Any],
              **env: str) -> tuple[subprocess.Popen, dict[str, Any], Path]:
    """Spawn `python -m pyxen.vmm` as hostd does; returns (process, its one line, domain dir)."""
    ddir = rundir / "domains" / str(domid)
    ddir.mkdir(parents=True, exist_ok=True)
    cfg_path = ddir / "config.json"
    cfg_path.write_text(json.dumps(config))
    with open(ddir / "vmm.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyxen.vmm", "--domid", str(domid), "--config",
             str(cfg_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            env=vmm_env(rundir, **env), start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    rest = proc.stdout.read()  # the VMM closes stdout after its one line
    assert rest == b"", f"more than one line on stdout: {rest!r}"
    return proc, json.loads(line), ddir


class Domain:
    """A client of one running VMM: control.sock requests/events, console.sock bytes."""

    def __init__(self, proc: subprocess.Popen, ddir: Path, domid: int) -> None:
        self.proc, self.ddir, self.domid = proc, ddir, domid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(ddir / "control.sock"))
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.replies: dict[Any, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.log: list[str] = []
        self._next = 0
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        f = self.sock.makefile("rb")
        for raw in f:
            msg = json.loads(raw)
            with self.cond:
                if "id" in msg:
                    self.replies[msg["id"]] = msg
                else:
                    if msg.get("event") == "log":
                        self.log.append(msg["line"])
                    self.events.put(msg)
                self.cond.notify_all()
        with self.cond:
            self.replies["<eof>"] = {}
            self.cond.notify_all()

    def request(self, op: str, **kw: Any) -> dict[str, Any]:
        self._next += 1
        rid = self._next
        self.sock.sendall((json.dumps({"id": rid, "op": op, **kw}) + "\n").encode())
        with self.cond:
            self.cond.wait_for(lambda: rid in self.replies or "<eof>" in self.replies)
            return self.replies.pop(rid)

    def wait_event(self, kind: str) -> dict[str, Any]:
        while True:
            ev = self.events.get()
            if ev.get("event") == kind:
                return ev

    def wait_log(self, pred: Callable[[str], bool]) -> str:
        with self.cond:
            seen = 0
            while True:
                for line in self.log[seen:]:
                    if pred(line):
                        return line
                seen = len(self.log)
                self.cond.wait()

    def wait_state(self, state: str) -> dict[str, Any]:
        while True:
            info = self.request("info")
            if info["state"] == state:
                return info
            time.sleep(0.02)

    def console(self) -> socket.socket:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(str(self.ddir / "console.sock"))
        return c

    def guest_lines(self) -> list[str]:
        prefix = f"(d{self.domid}) "
        return [line[len(prefix):] for line in self.log if line.startswith(prefix)]


def read_console_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


