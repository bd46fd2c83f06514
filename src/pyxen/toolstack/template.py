"""hostd's side of the VMM template (vmm/template.py): start it, or adopt the one an
earlier hostd left running; restart it when it dies; ask it for a domain's VMM.

A domain's VMM comes from the template by fork (milliseconds, pages shared with the
template) rather than from a new interpreter (python -m pyxen.vmm: imports, hundreds of
milliseconds, all pages private). The VMM is the same program either way, and it is not
hostd's child either way that matters: hostd follows it through its control.sock and its
pid (Domain.adopted_pid), as it follows VMMs adopted after a hostd restart.

A template is adopted only if it runs hostd's own code (pyxen/codeid.py: after an
upgrade in place it does not): otherwise a new one is started and, once it serves the
socket, the old one is stopped; the VMMs it forked earlier run on, untouched.

Whenever the template is not there (not started yet, dead and being restarted, refused
with PYXEN_TEMPLATE=0), hostd starts the VMM the old way: creation never depends on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pyxen.codeid import fingerprint
from pyxen.toolstack.procs import alive as _alive
from pyxen.vmm.template import TITLE_ROOM

START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0
RESTART_DELAY_S = 0.5


def enabled() -> bool:
    return os.environ.get("PYXEN_TEMPLATE", "1") not in ("0", "no", "off", "")


def socket_path(root: Path) -> Path:
    return root / "template" / "socket"


def pid_path(root: Path) -> Path:
    return root / "template" / "pid"


def _request(path: Path, req: dict[str, Any], fds: list[int] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(REQUEST_TIMEOUT_S)
        s.connect(str(path))
        socket.send_fds(s, [json.dumps(req).encode() + b"\n"], list(fds))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf) if buf.strip() else {}
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise OSError(reply.get("error") if isinstance(reply, dict) else "bad reply")
    return reply


class Template:
    """The host's template process, as hostd sees it."""

    def __init__(self, root: Path, log: Any) -> None:
        self.root = root
        self.log = log  # hostd.xen_log
        self.pid: int | None = None
        self.popen: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.stopping = False
        self.restarting: asyncio.Task[None] | None = None
        self.starting: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Start (or adopt) the template in the background: hostd answers meanwhile, and
        the first creations wait for it (it is ready about when a fresh VMM would be)."""
        self.starting = asyncio.create_task(self.start())

    @property
    def ready(self) -> bool:
        return self.pid is not None

    # ---------------------------------------------------------------- start / adopt
    async def start(self) -> None:
        """Adopt a live template at $RUNDIR/template/socket, else start one; never fails
        (no template: domains start the old way)."""
        if not enabled():
            return
        try:
            pid = await self._adopt_or_start()
        except (OSError, ValueError, TimeoutError) as e:
            self.log(f"VMM template unavailable ({e}): domains start a fresh interpreter")
            self._schedule_restart()
            return
        self._watch(pid)

    async def _adopt_or_start(self) -> int:
        loop = asyncio.get_running_loop()
        path = socket_path(self.root)
        old: int | None = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            reply = await loop.run_in_executor(None, _request, path, {"op": "ping"})
            pid = int(reply["pid"])
            if reply.get("code") == fingerprint():
                self.log(f"VMM template adopted: pid {pid}")
                return pid
            # an upgrade in place: it would fork its own (older) code for new domains
            self.log(f"VMM template (pid {pid}) runs other code ({reply.get('code')}; "
                     f"hostd runs {fingerprint()}): replacing it")
            old = pid
        if old is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        pid = await self._start_new(path)
        if old is not None:  # the new one holds the socket now: the old one may go
            await _terminate(old)
            self.log(f"VMM template (pid {old}) stopped; the domains it forked run on")
        return pid

    async def _start_new(self, path: Path) -> int:
        """Start a template; it takes `path` over (os.replace) once it is ready."""
        loop = asyncio.get_running_loop()
        logf = open(self.root / "template.log", "ab")  # noqa: SIM115 - the child's
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "pyxen.vmm.template", "--rundir", str(self.root),
                 TITLE_ROOM, " " * (256 + len(str(self.root)))],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
                env=dict(os.environ, PYXEN_RUNDIR=str(self.root)), close_fds=True)
        finally:
            logf.close()
        pid_path(self.root).parent.mkdir(parents=True, exist_ok=True)
        pid_path(self.root).write_text(f"{self.popen.pid}\n")  # known from the start
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            if self.popen.poll() is not None:
                raise OSError(f"the template exited with status {self.popen.returncode} "
                              f"(see {self.root / 'template.log'})")
            with contextlib.suppress(OSError, ValueError, KeyError):
                reply = await loop.run_in_executor(None, _request, path, {"op": "ping"})
                if int(reply["pid"]) == self.popen.pid:  # not a predecessor still there
                    self.log(f"VMM template started: pid {reply['pid']}")
                    return self.popen.pid
            await asyncio.sleep(0.02)
        self.popen.kill()
        self.popen.wait()
        raise TimeoutError("the template did not start")

    def _watch(self, pid: int) -> None:
        """Learn of the template's death through a pidfd (it may not be our child)."""
        self.pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pid = None
            self._schedule_restart()
            return
        asyncio.get_running_loop().add_reader(self.pidfd, self._died)

    def _died(self) -> None:
        loop = asyncio.get_running_loop()
        if self.pidfd is not None:
            loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        if self.popen is not None:
            self.popen.poll()  # reap it if it was ours
            self.popen = None
        if self.pid is not None and not self.stopping:
            self.log(f"VMM template (pid {self.pid}) died: restarting it; "
                     "domains start a fresh interpreter meanwhile")
        self.pid = None
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self.stopping or not enabled():
            return
        if self.restarting is not None and not self.restarting.done():
            return

        async def again() -> None:
            await asyncio.sleep(RESTART_DELAY_S)
            if not self.stopping and self.pid is None:
                await self.start()

        self.restarting = asyncio.create_task(again())

    # ---------------------------------------------------------------- use
    async def spawn(self, domid: int, config: Path, stdout_fd: int,
                    stderr_fd: int) -> int | None:
        """Fork domain `domid`'s VMM; its pid, or None when the template cannot (the
        caller then starts a fresh interpreter)."""
        if self.starting is not None and not self.starting.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.starting), START_TIMEOUT_S)
        if self.pid is None:
            return None
        req = {"op": "spawn", "domid": domid, "config": str(config),
               "env": {"PYXEN_RUNDIR": str(self.root)}}
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(None, _request, socket_path(self.root), req,
                                               [stdout_fd, stderr_fd])
            return int(reply["pid"])
        except (OSError, ValueError, KeyError) as e:
            self.log(f"VMM template could not start domain {domid} ({e}): "
                     "starting a fresh interpreter")
            return None

    async def stop(self) -> None:
        """hostd is stopping: the template goes too (its children, the VMMs, do not)."""
        self.stopping = True
        for task in (self.restarting, self.starting):
            if task is not None:
                task.cancel()
        pid = self.pid
        if pid is None and self.popen is not None and self.popen.poll() is None:
            pid = self.popen.pid  # started, not ready yet
        if pid is None:
            return
        await _terminate(pid, self.popen)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        if self.pidfd is not None:
            asyncio.get_running_loop().remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        self.pid = None
        for path in (socket_path(self.root), pid_path(self.root)):  # if it could not
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def _terminate(pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM a template (it leaves the socket to a successor: vmm/template.py), then
    SIGKILL after 5 s. Only that process: its children, the VMMs, are in sessions of
    their own and run on."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        if popen is not None:
            popen.poll()  # reap it if it is ours
        await asyncio.sleep(0.01)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


