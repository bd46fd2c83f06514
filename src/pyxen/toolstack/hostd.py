"""hostd: the host daemon, what spans domains (the libxl + xl daemon part of a Xen host).

It owns the domain table (domids, names), starts xenstored as its own process
(toolstack/xenstored.py: it outlives hostd), spawns one VMM per domain as
docs/internals.md says (toolstack/builder.py), keeps the hypervisor log (``xl dmesg``) and
applies on_poweroff/on_reboot/on_crash when a domain stops (toolstack/lifecycle.py). A
new hostd adopts the VMMs an earlier one left running (toolstack/recovery.py). This
module is the RPC layer: the socket and ``Hostd.dispatch``, the op table. xl talks to it over
$RUNDIR/pyxend.sock: JSON objects, one per line, each request ``{"id", "op", ...}``
answered by exactly one ``{"id", "ok", ...}`` (``"error"`` when not ok). Ops:

  ping                          -> pid
  create  config, paused        -> domid, name, console (path)
  list    domains?              -> domains: [{domid, name, uuid, state, ...}]
  destroy|pause|unpause domain
  shutdown domain, reason ("poweroff"|"reboot"), force
  wait    domid                 -> reason, once that domain has shut down or gone
  console domain                -> domid, path
  info                          -> xl info's keys
  dmesg   clear                 -> lines
  block_attach domain, disk (DiskSpec JSON)  -> devid
  block_detach domain, device (vdev or devid), force
  block_list   domains        -> disks: [{domid, devid, backend_id, state, evtch, ...}]
  network_attach domain, nic (NicSpec JSON)  -> devid, mac
  network_detach domain, device (devid or MAC), force
  network_list   domain       -> nics: [{devid, backend_id, mac, state, evtch, ...}]
  save    domain, file, checkpoint, paused, config?  -> pages, bytes, ... (saverestore.py)
  restore file, paused, config?                      -> domid, name, seconds

Run as ``python -m pyxen.toolstack.hostd``; SIGTERM destroys every domain and removes
the sockets. SIGUSR1 is the upgrade path: hostd stops serving and exits, leaving every
domain, xenstored and the VMM template running, for the next hostd (perhaps a newer
checkout's) to adopt (docs/internals.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pyxen
from pyxen import paths
from pyxen.toolstack.builder import Builder
from pyxen.toolstack.config import ConfigError, DomainConfig
from pyxen.toolstack.domain import (  # noqa: F401 - re-exported: hostd.Domain, hostd.OpError
    BUILD_TIMEOUT_S,
    DESTROY_TIMEOUT_S,
    DOMID_FIRST_RESERVED,
    GRAVEYARD,
    INFO_TIMEOUT_S,
    REASON_LETTERS,
    Domain,
    OpError,
    VmmControl,
    _last_line,
    _rmtree,
    pvcontrol_ack_timeout,
)
from pyxen.toolstack.hostinfo import HostInfo
from pyxen.toolstack.lifecycle import Lifecycle
from pyxen.toolstack.template import Template

LOG_RING_LINES = 4096  # Xen's console ring is bounded too (conring_size)


class Hostd(Builder, Lifecycle, HostInfo):
    """The RPC layer (clients, dispatch) and the domain table; building, lifecycle and
    host info are the mixins' (toolstack/builder.py, lifecycle.py, hostinfo.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.domains: dict[int, Domain] = {}
        self.next_domid = 1
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_RING_LINES)
        self.graveyard: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._ack_seq = 0  # tokens of the control/shutdown acknowledgement watches
        self.xs_server: Any = None
        self.xs_pid: int | None = None
        self.xs: Any = None
        self.server: asyncio.base_events.Server | None = None
        self.stopping = asyncio.Event()
        self.detaching = False  # SIGUSR1: leave everything running (an upgrade)
        self.boot_time = time.time()
        self.template = Template(root, self.xen_log)  # VMMs by fork (toolstack/template.py)

    # ------------------------------------------------------------------ logging
    def xen_log(self, text: str) -> None:
        self.log.append(f"(XEN) {text}")
        print(f"(XEN) {text}", flush=True)

    # ------------------------------------------------------------------ start/stop
    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "domains").mkdir(exist_ok=True)
        self._start_xenstored()
        from .schedops import host_start
        host_start(self)  # cgroups, cpupools (toolstack/schedops.py)
        from .recovery import adopt_all
        await adopt_all(self)  # the VMMs a previous hostd left running
        self.template.begin()
        sock_path = paths.hostd_socket(self.root)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        self.server = await asyncio.start_unix_server(self.client_connected, path=str(sock_path),
                                                      limit=1 << 24)
        os.chmod(sock_path, 0o600)
        (self.root / "hostd.pid").write_text(f"{os.getpid()}\n")
        self.xen_log(f"pyxen {pyxen.__version__} (Xen {pyxen.XEN_MAJOR}.{pyxen.XEN_MINOR}"
                     f"{pyxen.XEN_EXTRAVERSION} ABI) hostd started, pid {os.getpid()}")

    def _start_xenstored(self) -> None:
        """xenstored runs as its own process (toolstack/xenstored.py) so that it and the
        guests' xenstore rings outlive hostd; a restarted hostd finds it still serving."""
        from pyxen.xenstore.client import XenstoreClient

        from . import xenstored
        try:
            self.xs_pid, adopted = xenstored.start_or_adopt(self.root)
        except OSError as e:
            self.xen_log(f"xenstored not available ({e}): running without xenstore")
            return
        self.xs = XenstoreClient(str(paths.xenstored_socket(self.root)))
        self.xs_server = xenstored.XsDomains(self.xs)
        self.xen_log(f"xenstored {'found' if adopted else 'started'} (pid {self.xs_pid}), "
                     f"listening on {paths.xenstored_socket(self.root)}")

    def detach(self) -> None:
        """SIGUSR1: exit as soon as possible, leaving the domains to the next hostd."""
        self.detaching = True
        self.stopping.set()

    async def leave(self) -> None:
        """hostd goes, nothing else: what a kill -9 would leave, minus its socket and pid
        file. A creation in progress is cut short; the next hostd removes it."""
        if self.server is not None:
            self.server.close()
        for p in (paths.hostd_socket(self.root), self.root / "hostd.pid"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if self.xs is not None:
            with contextlib.suppress(Exception):
                self.xs.close()

    async def stop(self) -> None:
        """SIGTERM: destroy every domain, stop serving, remove the sockets."""
        if self.server is not None:
            self.server.close()
        await asyncio.gather(*(self.destroy(d, "destroyed") for d in list(self.domains.values())),
                             return_exceptions=True)
        await self.template.stop()
        with contextlib.suppress(FileNotFoundError):
            paths.hostd_socket(self.root).unlink()
        if self.xs is not None:
            with contextlib.suppress(Exception):
                self.xs.close()
        if self.xs_server is not None:
            from . import xenstored
            xenstored.stop(self.root, self.xs_pid)
        for p in (paths.xenstored_socket(self.root), paths.xenstored_ro_socket(self.root),
                  self.root / "hostd.pid"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        from .schedops import host_stop
        host_stop(self)

    # ------------------------------------------------------------------ clients
    async def client_connected(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(req: dict[str, Any]) -> None:
            rid = req.get("id")
            try:
                reply = await self.dispatch(req)
                reply = {"id": rid, "ok": True, **reply}
            except (OpError, ConfigError) as e:
                reply = {"id": rid, "ok": False, "error": str(e)}
            except Exception as e:  # noqa: BLE001 - a bug must not kill hostd
                self.xen_log(f"hostd: internal error in {req.get('op')}: {e!r}")
                reply = {"id": rid, "ok": False, "error": f"internal error: {e!r}"}
            async with lock:
                with contextlib.suppress(OSError, ConnectionError):
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await writer.drain()

        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("not an object")
                except ValueError:
                    req = {"op": None}
                t = asyncio.create_task(answer(req))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    async def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "create":
            if not isinstance(req.get("config"), dict):
                raise OpError("create: missing config")
            cfg = DomainConfig.from_json(req["config"])
            dom = await self.create(cfg, paused=bool(req.get("paused")))
            return {"domid": dom.domid, "name": dom.config.name,
                    "console": str(dom.dir / "console.sock")}
        if op == "list":
            return {"domains": await self.list_domains(req.get("domains"))}
        if op == "info":
            if req.get("numa"):  # xl info -n: toolstack/numa.py
                from .numa import info_sections, read_topology, sysfs_root
                return {"info": self.host_info(),
                        "numa": info_sections(read_topology(sysfs_root()))}
            return {"info": self.host_info()}
        if op == "dmesg":
            lines = list(self.log)
            if req.get("clear"):
                self.log.clear()
            return {"lines": lines}
        if op == "debug_keys":  # xl debug-keys: toolstack/keyhandler.py
            from .keyhandler import debug_keys
            return await debug_keys(self, req.get("keys"))
        if op == "wait":
            return {"reason": await self.wait(int(req.get("domid", -1)))}
        from .saverestore import OPS as SAVERESTORE_OPS
        if op in SAVERESTORE_OPS:  # xl save / restore: toolstack/saverestore.py
            from .saverestore import saverestore_op
            return await saverestore_op(self, op, req)
        from .schedops import OPS as SCHED_OPS
        if op in SCHED_OPS:  # credit scheduler, vCPUs, cpupools: toolstack/schedops.py
            from .schedops import sched_op
            return await sched_op(self, op, req)
        from .domops import OPS as DOM_OPS
        if op in DOM_OPS:  # domid, rename, uptime, sysrq, trigger, dump-core, top: domops.py
            from .domops import dom_op
            return await dom_op(self, op, req)
        from .migrate import OPS as MIGRATE_OPS
        if op in MIGRATE_OPS:  # xl migrate / migrate-receive: toolstack/migrate.py
            from .migrate import migrate_op
            return await migrate_op(self, op, req)
        dom = self.find(req.get("domain"))
        if op == "console":
            return {"domid": dom.domid, "path": str(dom.dir / "console.sock")}
        if op == "destroy":
            dom.destroy_requested = True
            while dom.creating:  # its builder tears it down at its next step (builder.py)
                await asyncio.sleep(0.02)
            if dom.domid not in self.domains:
                return {}
            await self.destroy(dom, "destroyed")
            return {}
        if op in ("pause", "unpause"):
            await self.pause(dom, op == "pause")
            return {}
        if op in ("block_attach", "block_detach", "block_list"):
            from .blockops import block_op
            return await block_op(self, dom, op, req)
        if op in ("network_attach", "network_detach", "network_list"):
            from .netops import network_op
            return await network_op(self, dom, op, req)
        if op in ("mem_set", "mem_max"):  # xl mem-set / mem-max: toolstack/memctl.py
            from .memctl import MemError, mem_op
            try:
                return await mem_op(self, dom, op, req)
            except MemError as e:
                raise OpError(str(e)) from None
        if op == "shutdown":
            reason = req.get("reason", "poweroff")
            if reason not in ("poweroff", "reboot"):
                raise OpError(f"shutdown: bad reason {reason!r}")
            return await self.shutdown(dom, reason, bool(req.get("force")))
        raise OpError(f"unknown request {op!r}")

    # ------------------------------------------------------------------ lookup
    def find(self, ident: Any) -> Domain:
        text = str(ident) if ident is not None else ""
        if text.isdigit():
            domid = int(text)
            if domid == 0:
                raise OpError("Domain-0 is pyxen's host: this operation does not apply to it")
            if domid in self.domains:
                return self.domains[domid]
        else:
            for dom in self.domains.values():
                if dom.config.name == text:
                    return dom
        raise OpError(f"{text} is an invalid domain identifier (rc=-6)")

    # ------------------------------------------------------------------ memory

    # ------------------------------------------------------------------ create

    # ------------------------------------------------------------------ VMM events

    # ------------------------------------------------------------------ operations

    # ------------------------------------------------------------------ list / info


async def amain(root: Path) -> int:
    hostd = Hostd(root)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, hostd.stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, hostd.detach)
    await hostd.start()
    await hostd.stopping.wait()
    if hostd.detaching:
        hostd.xen_log(f"hostd exiting on SIGUSR1: {len(hostd.domains)} domain(s), xenstored "
                      "and the VMM template keep running for the next hostd")
        await hostd.leave()
        sys.stdout.flush()
        sys.stderr.flush()
        # now, as kill -9 would: no task may run on (a cancelled one could act on a
        # domain: a control connection's end reads as the VMM's death)
        os._exit(0)
    hostd.xen_log("hostd stopping: destroying all domains")
    await hostd.stop()
    return 0


def main() -> int:
    root = paths.rundir()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["PYXEN_RUNDIR"] = str(root)
    lock = open(root / "hostd.lock", "a")  # noqa: SIM115 - held for hostd's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"hostd: another hostd is running on {root}", file=sys.stderr)
        return 0
    try:
        return asyncio.run(amain(root))
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
