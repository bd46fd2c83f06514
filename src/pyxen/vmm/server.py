"""control.sock (JSON lines: requests, replies, events) and console.sock (a byte stream)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ..arch.x86.machine import X86Machine
from ..arch.x86.pvh import BuildError
from ..backends.loopback import LoopbackBackend
from ..hypervisor.domain import Domain
from ..hypervisor.public import hvm_op as H
from ..hypervisor.public.sched import SHUTDOWN_NAMES
from .events import dom0_channels, teardown_event_services


class VmmServer:
    def __init__(self, domain: Domain, machine: X86Machine, ddir: Path,
                 backlog: list[dict]) -> None:
        self.domain = domain
        self.machine = machine
        self.ddir = ddir
        self.control_path = ddir / "control.sock"
        self.console_path = ddir / "console.sock"
        self.backlog = backlog  # events before the first control client (build log)
        self.clients: set[asyncio.StreamWriter] = set()
        self.console_writer: asyncio.StreamWriter | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done: asyncio.Event | None = None
        self.socks: list[socket.socket] = []
        self.backends: list[Any] = []  # dom0 backends serving this domain (loopback, ...)

    # --- sockets -------------------------------------------------------------------------

    def bind(self) -> None:
        """Listening sockets exist (and accept) before we announce "built"."""
        try:
            self.ddir.mkdir(parents=True, exist_ok=True)
            for path in (self.control_path, self.console_path):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.socks.append(s)
                s.bind(str(path))
                s.listen(16)
        except OSError as e:
            self.cleanup()
            raise BuildError(f"cannot create the domain's sockets in {self.ddir}: "
                             f"{e.strerror or e}") from None

    def cleanup(self) -> None:
        for s in self.socks:
            s.close()
        for path in (self.control_path, self.console_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def serve(self) -> int:
        try:
            return asyncio.run(self._serve())
        finally:
            self.cleanup()

    async def _serve(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        self.domain.emit = self._emit_threadsafe
        for ev in self.backlog:
            self._log_stderr(ev)
        self.loop.add_signal_handler(signal.SIGTERM, self.done.set)
        self.loop.add_signal_handler(signal.SIGINT, self.done.set)
        ctl = await asyncio.start_unix_server(self._control_client, sock=self.socks[0])
        con = await asyncio.start_unix_server(self._console_client, sock=self.socks[1])
        await self.done.wait()
        self.domain.destroy()
        await self.loop.run_in_executor(None, self.machine.join)
        await self.loop.run_in_executor(None, teardown_event_services, self.domain,
                                        self.backends)
        await asyncio.sleep(0)  # let the teardown's log line reach the clients
        ctl.close()
        con.close()
        if self.console_writer is not None:
            self.console_writer.close()
        for w in list(self.clients):
            try:
                await w.drain()
            except (ConnectionError, RuntimeError):
                pass
            w.close()
        self.cleanup()
        return 0

    # --- events ----------------------------------------------------------------------------

    def _emit_threadsafe(self, ev: dict[str, Any]) -> None:
        assert self.loop is not None
        try:
            self.loop.call_soon_threadsafe(self._broadcast, ev)
        except RuntimeError:  # loop closed: the domain is gone
            pass

    @staticmethod
    def _log_stderr(ev: dict[str, Any]) -> None:
        if ev.get("event") == "log":
            print(ev["line"], file=sys.stderr, flush=True)
        else:
            print(json.dumps(ev), file=sys.stderr, flush=True)

    def _broadcast(self, ev: dict[str, Any]) -> None:
        self._log_stderr(ev)
        if not self.clients and self.backlog is not None and len(self.backlog) < 1000:
            self.backlog.append(ev)
            return
        line = (json.dumps(ev) + "\n").encode()
        for w in list(self.clients):
            if w.is_closing():
                self.clients.discard(w)
                continue
            w.write(line)

    # --- control.sock ----------------------------------------------------------------------

    async def _control_client(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        conn: dict[str, Any] = {}  # per connection: a fd taken for `save` (vmm/saveops.py)
        if self.backlog:
            pending, self.backlog = self.backlog, []
            for ev in pending:
                writer.write((json.dumps(ev) + "\n").encode())
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                reply = await self._request(line, conn)
                if conn.pop("take_fd", False):
                    from .saveops import take_fd
                    conn["fd"] = await take_fd(writer, (json.dumps(reply) + "\n").encode())
                    continue
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if "fd" in conn:
                os.close(conn.pop("fd"))
            self.clients.discard(writer)
            writer.close()

    async def _request(self, line: bytes, conn: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return {"id": None, "ok": False, "error": f"malformed request: {e}"}
        rid = req.get("id")
        op = req.get("op")
        d = self.domain
        assert self.loop is not None and self.done is not None
        try:
            if op == "unpause":
                d.unpause()
            elif op == "pause":
                await self.loop.run_in_executor(None, d.pause)
            elif op == "info":
                return {"id": rid, "ok": True, **self.info()}
            elif op == "destroy":
                self.loop.call_soon(self.done.set)
            elif op == "loopback_attach":
                port, gref = req.get("port"), req.get("gref")
                if not isinstance(port, int) or not isinstance(gref, int):
                    return {"id": rid, "ok": False,
                            "error": "loopback_attach needs integer 'port' and 'gref'"}
                self.backends.append(await self.loop.run_in_executor(
                    None, lambda: LoopbackBackend(dom0_channels(d), d.grant_table, d.domid,
                                                  port, gref, report=d.log)))
            elif op == "vcpu_info":  # xl vcpu-list (vmm/vcpuctl.py)
                from .vcpuctl import vcpu_info
                return {"id": rid, "ok": True, "vcpus": vcpu_info(d)}
            elif op == "vcpu_affinity":  # xl vcpu-pin, cpupools (vmm/vcpuctl.py)
                from .vcpuctl import set_affinity
                set_affinity(d, req.get("vcpu"), req.get("cpus"))
            elif op == "set_max_mem":  # xl mem-set / mem-max (Xen's XEN_DOMCTL_max_mem)
                kib = req.get("max_kib")
                if isinstance(kib, bool) or not isinstance(kib, int) or kib < 0:
                    return {"id": rid, "ok": False,
                            "error": "set_max_mem needs a non-negative integer 'max_kib'"}
                from ..hypervisor.memory import set_max_pages
                set_max_pages(d, kib)
            elif op == "debug_key":  # xl debug-keys (hypervisor/keyhandler.py)
                from ..hypervisor.keyhandler import debug_key
                key = req.get("key")
                if not isinstance(key, str) or len(key) != 1:
                    return {"id": rid, "ok": False, "error": "debug_key needs one 'key'"}
                return {"id": rid, "ok": True,
                        **await self.loop.run_in_executor(None, debug_key, d, key)}
            elif op in ("migrate_send", "migrate_resume", "migrate_probe",
                        "migrate_suspend_abort"):  # live migration: vmm/precopy.py
                from .precopy import vmm_op
                return {"id": rid, "ok": True, **await self.loop.run_in_executor(
                    None, vmm_op, d, self.machine, req)}
            elif op in ("take_fd", "save", "resume"):  # save/restore (vmm/saveops.py)
                from . import saveops
                conn = conn if conn is not None else {}
                if op == "take_fd":
                    conn["take_fd"] = True
                elif op == "save":
                    try:
                        return {"id": rid, "ok": True, **await self.loop.run_in_executor(
                            None, saveops.save, self, req, conn.pop("fd", None))}
                    except saveops.SaveFailed as e:
                        return {"id": rid, "ok": False, "error": str(e)}
                else:
                    await self.loop.run_in_executor(None, saveops.resume, self, req)
            elif op in ("trigger", "dump_core", "dev_stats"):  # xl trigger/dump-core/top
                from . import domctl
                if op == "trigger":
                    try:
                        await self.loop.run_in_executor(None, domctl.trigger, d,
                                                        req.get("kind"), req.get("vcpu", 0))
                    except OSError as e:  # Xen's answer: -ESRCH, -ENOSYS
                        return {"id": rid, "ok": False, "error": e.strerror, "errno": e.errno}
                    return {"id": rid, "ok": True}
                if op == "dump_core":
                    return {"id": rid, "ok": True, **await self.loop.run_in_executor(
                        None, domctl.dump_core, d, req.get("path"))}
                return {"id": rid, "ok": True, **domctl.dev_stats(self.backends)}
            else:
                return {"id": rid, "ok": False, "error": f"unknown op {op!r}"}
        except Exception as e:  # a request must never take the VMM down
            return {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}
        return {"id": rid, "ok": True}

    def info(self) -> dict[str, Any]:
        d = self.domain
        reason = d.shutdown_reason
        return {
            "state": d.state(),
            "cpu_time": round(d.cpu_time(), 6),
            "vcpus": d.online_vcpus(),
            "max_vcpus": d.max_vcpus,
            "memory_kib": d.memory.size // 1024,
            "max_memory_kib": d.max_memory // 1024,
            "shutdown_reason": None if reason is None else SHUTDOWN_NAMES.get(reason, "crash"),
            "shutdown_code": d.shutdown_code,
            "pv_control": self.pv_control(),
        }

    def pv_control(self) -> bool:
        """Whether the guest has PV drivers to hear control/shutdown: libxl's
        libxl__domain_pvcontrol_available() test for HVM guests (HVM_PARAM_CALLBACK_IRQ is
        non-zero), widened to a per-vCPU upcall vector (HVMOP_set_evtchn_upcall_vector),
        the other way a guest says it takes event channels. Xen 4.17's libxl asks this of
        HVM guests only and assumes it of PVH ones; pyxen asks it of every guest (see
        docs/xl.md)."""
        d = self.domain
        if d.hvm_params.get(H.HVM_PARAM_CALLBACK_IRQ, 0):
            return True
        ev = d.evtchn
        return ev is not None and any(st.upcall_vector for st in ev.vstate)

    # --- console.sock ----------------------------------------------------------------------

    async def _console_client(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        assert self.loop is not None
        old, self.console_writer = self.console_writer, writer
        if old is not None:
            old.close()
        loop = self.loop

        def listener(data: bytes) -> None:
            loop.call_soon_threadsafe(_write, writer, data)

        pending = self.domain.console.attach(listener)
        if pending:
            writer.write(pending)
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                self.domain.console.feed(data)
        except ConnectionError:
            pass
        finally:
            if self.console_writer is writer:
                self.console_writer = None
                self.domain.console.attach(None)
            writer.close()


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)

