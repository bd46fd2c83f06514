"""A domain as hostd knows it, and hostd's connection to its VMM's control.sock.

Shared by hostd.py (the RPC layer and the table) and its parts (builder.py,
lifecycle.py, hostinfo.py, recovery.py), which all import from here, never from hostd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DomainConfig

if TYPE_CHECKING:
    from .hostd import Hostd

DOMID_FIRST_RESERVED = 0x7FF0
BUILD_TIMEOUT_S = 120.0
DESTROY_TIMEOUT_S = 10.0
INFO_TIMEOUT_S = 3.0
PVCONTROL_ACK_TIMEOUT_S = 60.0  # libxl__domain_pvcontrol's xswait timeout


def pvcontrol_ack_timeout() -> float:
    """libxl's 60 s, or PYXEN_PVCONTROL_TIMEOUT (seconds) for impatient hosts and tests."""
    try:
        return float(os.environ.get("PYXEN_PVCONTROL_TIMEOUT", PVCONTROL_ACK_TIMEOUT_S))
    except ValueError:
        return PVCONTROL_ACK_TIMEOUT_S


GRAVEYARD = 256  # how many dead domains' last reasons `wait` can still report
REASON_LETTERS = {"poweroff": "-", "reboot": "r", "suspend": "s", "crash": "c",
                  "watchdog": "w", "soft_reset": "S"}



class OpError(Exception):
    """An error answered to the client as one line."""


@dataclass
class Domain:
    domid: int
    config: DomainConfig
    dir: Path
    state: str = "building"  # building/running/blocked/paused/shutdown/crashed/dying
    proc: asyncio.subprocess.Process | None = None
    adopted_pid: int | None = None  # a VMM not hostd's child: forked by the template
    # (toolstack/template.py) or left by a previous hostd (toolstack/recovery.py)
    ctl: VmmControl | None = None
    shutdown_reason: str | None = None
    shutdown_code: int | None = None
    started: float = field(default_factory=time.time)
    destroying: bool = False
    destroy_requested: bool = False  # by xl destroy: no restart action may follow
    creating: bool = False  # Builder.create is still at work: a destroy waits for it
    handled_shutdown: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    waiters: list[asyncio.Future[str]] = field(default_factory=list)
    store: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self.adopted_pid


class VmmControl:
    """One connection to a VMM's control.sock: requests with ids, and its events."""

    def __init__(self, hostd: Hostd, dom: Domain, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.hostd, self.dom, self.reader, self.writer = hostd, dom, reader, writer
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 1
        self.task = asyncio.create_task(self._read_loop())

    async def request(self, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            self.writer.write(json.dumps({"id": rid, "op": op, **args}).encode() + b"\n")
            await self.writer.drain()
            return await asyncio.wait_for(fut, timeout)
        except (OSError, ConnectionError) as e:
            raise OpError(f"domain {self.dom.domid}: VMM not reachable: {e}") from e
        except TimeoutError as e:
            raise OpError(f"domain {self.dom.domid}: VMM did not answer '{op}'") from e
        finally:
            self.pending.pop(rid, None)

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                if "id" in msg and msg.get("id") in self.pending:
                    fut = self.pending[msg["id"]]
                    if not fut.done():
                        fut.set_result(msg)
                elif "event" in msg:
                    self.hostd.vmm_event(self.dom, msg)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("control connection closed"))
            self.hostd.vmm_gone(self.dom, "control connection closed")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _rmtree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _rmtree(child)
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

