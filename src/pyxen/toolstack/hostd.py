"""hostd: the host daemon, what spans domains (the libxl + xl daemon part of a Xen host).

It owns the domain table (domids, names), runs xenstored in-process, spawns one VMM per
domain as docs/internals.md says, keeps the hypervisor log (``xl dmesg``) and applies
on_poweroff/on_reboot/on_crash when a domain stops. xl talks to it over
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

Run as ``python -m pyxen.toolstack.hostd``; SIGTERM destroys every domain and removes
the sockets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import platform
import signal
import sys
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyxen
from pyxen import paths
from pyxen.toolstack import devices, vbd, xsdomain
from pyxen.toolstack.config import ConfigError, DomainConfig

DOMID_FIRST_RESERVED = 0x7FF0
LOG_RING_LINES = 4096  # Xen's console ring is bounded too (conring_size)
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
    adopted_pid: int | None = None  # a VMM a previous hostd spawned (toolstack/recovery.py)
    ctl: VmmControl | None = None
    shutdown_reason: str | None = None
    shutdown_code: int | None = None
    started: float = field(default_factory=time.time)
    destroying: bool = False
    destroy_requested: bool = False  # by xl destroy: no restart action may follow
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


class Hostd:
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
        self.boot_time = time.time()

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

    async def stop(self) -> None:
        """SIGTERM: destroy every domain, stop serving, remove the sockets."""
        if self.server is not None:
            self.server.close()
        await asyncio.gather(*(self.destroy(d, "destroyed") for d in list(self.domains.values())),
                             return_exceptions=True)
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
        from .schedops import OPS as SCHED_OPS
        if op in SCHED_OPS:  # credit scheduler, vCPUs, cpupools: toolstack/schedops.py
            from .schedops import sched_op
            return await sched_op(self, op, req)
        dom = self.find(req.get("domain"))
        if op == "console":
            return {"domid": dom.domid, "path": str(dom.dir / "console.sock")}
        if op == "destroy":
            dom.destroy_requested = True
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

    def _alloc_domid(self) -> int:
        for _ in range(DOMID_FIRST_RESERVED):
            domid = self.next_domid
            self.next_domid = domid + 1 if domid + 1 < DOMID_FIRST_RESERVED else 1
            if domid not in self.domains and not (self.root / "domains" / str(domid)).exists():
                return domid
        raise OpError("no free domain id")

    # ------------------------------------------------------------------ memory
    @staticmethod
    def meminfo() -> dict[str, int]:
        out: dict[str, int] = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, rest = line.partition(":")
                with contextlib.suppress(ValueError, IndexError):
                    out[k] = int(rest.split()[0])
        return out

    def free_memory_mib(self) -> int:
        mi = self.meminfo()
        avail = mi.get("MemAvailable", mi.get("MemFree", 0)) // 1024
        used = self.domains_memory_mib()
        return max(0, avail - used)

    def domains_memory_mib(self) -> int:
        """What the domains are given: each one's current target (xl mem-set moves it)."""
        from .memctl import target_kib
        return sum(target_kib(self, d) for d in self.domains.values()) // 1024

    # ------------------------------------------------------------------ create
    async def create(self, cfg: DomainConfig, paused: bool = False,
                     domid: int | None = None) -> Domain:
        if self.stopping.is_set():
            raise OpError("hostd is stopping: no new domains")
        cfg.check_files()
        if not os.path.exists("/dev/kvm"):
            raise OpError("/dev/kvm not found: pyxen needs KVM (load kvm_intel or kvm_amd, "
                          "or run on a host with virtualization)")
        for other in self.domains.values():
            if other.config.name == cfg.name:
                raise OpError(f'Domain with name "{cfg.name}" already exists.')
        free = self.free_memory_mib()
        if cfg.memory > free:
            raise OpError(f"failed to free memory for the domain: {cfg.name} needs "
                          f"{cfg.memory} MiB, the host has {free} MiB free")
        from .numa import auto_place
        self.xen_log(auto_place(cfg, [d.config for d in self.domains.values()]))
        if domid is None:
            domid = self._alloc_domid()
        ddir = paths.domain_dir(domid, self.root)
        dom = Domain(domid=domid, config=cfg, dir=ddir)
        self.domains[domid] = dom  # reserves the name and the domid from here on
        try:
            await self._build(dom)
            from .schedops import domain_built
            await domain_built(self, dom)
            self._write_xenstore(dom)
            await self._attach_disks(dom)
            from .netops import attach_vifs
            await attach_vifs(self, dom)
            if not paused:
                await self._vmm(dom, "unpause")
            dom.state = "paused" if paused else "running"
        except BaseException as e:
            self._keep_vmm_log(dom, e)
            await self._teardown(dom)
            self.domains.pop(domid, None)
            self.graveyard_add(domid, "destroyed")
            if isinstance(e, OpError):
                raise
            if isinstance(e, Exception):
                raise OpError(f"domain creation failed: {e}") from e
            raise
        self.xen_log(f"Domain {domid} ({cfg.name}) created: {cfg.vcpus} vCPU(s), "
                     f"{cfg.memory} MiB, kernel {cfg.kernel}")
        return dom

    def _keep_vmm_log(self, dom: Domain, err: BaseException) -> None:
        """The domain dir goes (nothing left behind); its vmm.log goes to hostd.log."""
        self.xen_log(f"Domain {dom.domid} ({dom.config.name}) creation failed: {err}")
        with contextlib.suppress(OSError):
            text = (dom.dir / "vmm.log").read_text(errors="replace")
            if text.strip():
                print(f"--- vmm.log of domain {dom.domid} ---\n{text.rstrip()}\n---",
                      flush=True)

    async def _build(self, dom: Domain) -> None:
        ddir = dom.dir
        with contextlib.suppress(FileNotFoundError):
            _rmtree(ddir)
        ddir.mkdir(parents=True)
        cfg_path = ddir / "config.json"
        cfg_path.write_text(dom.config.dumps() + "\n")
        vmm_log = open(ddir / "vmm.log", "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ, PYXEN_RUNDIR=str(self.root))
        try:
            dom.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pyxen.vmm", "--domid", str(dom.domid),
                "--config", str(cfg_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=vmm_log, env=env, start_new_session=True)
        finally:
            vmm_log.close()
        asyncio.create_task(self._watch_process(dom))
        assert dom.proc.stdout is not None
        try:
            line = await asyncio.wait_for(dom.proc.stdout.readline(), BUILD_TIMEOUT_S)
        except TimeoutError as e:
            raise OpError(f"domain {dom.domid}: the VMM did not report within "
                          f"{BUILD_TIMEOUT_S:.0f} s (see {ddir / 'vmm.log'})") from e
        msg: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            msg = json.loads(line) if line.strip() else {}
        if not isinstance(msg, dict):
            msg = {}
        if msg.get("event") == "error":
            raise OpError(str(msg.get("message") or "the VMM failed to build the domain"))
        if msg.get("event") != "built":
            await asyncio.wait_for(dom.proc.wait(), 5)
            tail = _last_line(ddir / "vmm.log")
            raise OpError(f"domain {dom.domid}: the VMM exited while building the domain"
                          + (f": {tail}" if tail else f" (status {dom.proc.returncode})"))
        dom.store = {k: msg[k] for k in ("store_port", "store_mfn", "console_port",
                                         "console_mfn") if isinstance(msg.get(k), int)}
        reader, writer = await asyncio.open_unix_connection(str(ddir / "control.sock"),
                                                            limit=1 << 24)
        dom.ctl = VmmControl(self, dom, reader, writer)
        dom.state = "paused"

    def _write_xenstore(self, dom: Domain) -> None:
        if self.xs is None:
            return
        xsdomain.write_domain(self.xs, dom.domid, dom.config,
                              store_port=dom.store.get("store_port"),
                              store_mfn=dom.store.get("store_mfn"),
                              console_port=dom.store.get("console_port"),
                              console_mfn=dom.store.get("console_mfn"))
        self._introduce(dom)

    async def _attach_disks(self, dom: Domain) -> None:
        """libxl__add_disks: each ``disk =`` entry's device, before the guest runs."""
        if self.xs is None:
            if dom.config.disks:
                raise OpError("xenstored is not running: cannot add the domain's disks")
            return
        loop = asyncio.get_running_loop()
        for disk in dom.config.disk_specs():
            try:
                await loop.run_in_executor(None, vbd.attach, self.xs, dom.domid, disk)
            except devices.DeviceError as e:
                raise OpError(str(e)) from None

    def _introduce(self, dom: Domain) -> None:
        """Tell xenstored the domain exists (as XS_INTRODUCE; fires @introduceDomain).

        The guest's ring (store_mfn/store_port from the VMM's "built" event, when it has
        one) is served by xenstored through its ring mapper."""
        try:
            self.xs_server.introduce_domain(dom.domid, gfn=int(dom.store.get("store_mfn", 0)),
                                            port=int(dom.store.get("store_port", 0)))
        except Exception as e:  # noqa: BLE001 - the domain runs without xenstore then
            self.xen_log(f"d{dom.domid}: xenstore introduce failed: {e}")

    def _release(self, dom: Domain) -> None:
        """Fires @releaseDomain, as Xen's xenstored does when a domain dies."""
        with contextlib.suppress(Exception):
            if self.xs_server.is_domain_introduced(dom.domid):
                self.xs_server.release_domain(dom.domid)

    def _fire_release_watch(self, dom: Domain) -> None:
        """The domain has shut down: @releaseDomain fires (C xenstored on VIRQ_DOM_EXC),
        and once more when it is destroyed and released."""
        with contextlib.suppress(Exception):
            self.xs_server.fire_release_domain_watch(dom.domid)

    # ------------------------------------------------------------------ VMM events
    def vmm_event(self, dom: Domain, msg: dict[str, Any]) -> None:
        ev = msg.get("event")
        if ev == "log":
            line = str(msg.get("line", "")).rstrip("\n")
            if line:
                self.log.append(line)
        elif ev == "shutdown":
            reason = msg.get("reason")
            if reason not in REASON_LETTERS:
                reason = "crash"
            code = msg.get("code")
            asyncio.create_task(self.domain_shutdown(dom, reason, code))

    def vmm_gone(self, dom: Domain, why: str) -> None:
        """The VMM went away without being asked to: Xen would call that a crash."""
        if dom.destroying or dom.state == "building" or dom.domid not in self.domains:
            return
        if dom.handled_shutdown and dom.state in ("shutdown", "crashed"):
            dom.state = "crashed" if dom.shutdown_reason == "crash" else "shutdown"
            return
        self.xen_log(f"Domain {dom.domid} ({dom.config.name}): VMM exited unexpectedly "
                     f"({why}): treating it as a crash")
        asyncio.create_task(self.domain_shutdown(dom, "crash", None))

    async def _watch_process(self, dom: Domain) -> None:
        proc = dom.proc
        if proc is None:
            return
        rc = await proc.wait()
        if dom.state != "building":
            self.vmm_gone(dom, f"exit status {rc}")

    async def domain_shutdown(self, dom: Domain, reason: str, code: Any) -> None:
        if dom.handled_shutdown or dom.destroying:
            return
        dom.handled_shutdown = True
        dom.shutdown_reason, dom.shutdown_code = reason, code
        dom.state = "crashed" if reason == "crash" else "shutdown"
        self._fire_release_watch(dom)
        cfg = dom.config
        action = {"poweroff": cfg.on_poweroff, "reboot": cfg.on_reboot,
                  "crash": cfg.on_crash, "watchdog": cfg.on_watchdog}.get(reason, "preserve")
        self.xen_log(f"Domain {dom.domid} ({cfg.name}) shut down, reason {reason}"
                     + (f" code {code}" if code is not None else "") + f": action {action}")
        try:
            if action == "destroy":
                await self.destroy(dom, reason)
            elif action == "restart":
                await self.destroy(dom, reason)
                await self._recreate(dom, cfg)
            elif action == "rename-restart":
                self._preserve_renamed(dom)
                self._wake(dom, reason)
                await self._recreate(dom, cfg)
            else:  # preserve (and suspend): stays, as the list shows, until xl destroy
                self._wake(dom, reason)
        except Exception as e:  # noqa: BLE001
            self.xen_log(f"Domain {dom.domid} ({cfg.name}): {action} failed: {e}")

    async def _recreate(self, dom: Domain, cfg: DomainConfig) -> None:
        if dom.destroy_requested or self.stopping.is_set():
            return
        try:
            dom = await self.create(cfg)
            self.xen_log(f"Domain {cfg.name} restarted as domain {dom.domid}")
        except (OpError, ConfigError) as e:
            self.xen_log(f"Domain {cfg.name}: restart failed: {e}")

    def _preserve_renamed(self, dom: Domain) -> None:
        """xl's preserve_domain(): rename to NAME-YYYYmmddTHHMMZ with a new uuid."""
        old = dom.config
        suffix = time.strftime("-%Y%m%dT%H%MZ", time.gmtime())
        name = old.name + suffix
        taken = {d.config.name for d in self.domains.values()}
        if name in taken:
            name = f"{name}-{dom.domid}"
        new_uuid = str(uuidlib.uuid4())
        if self.xs is not None:
            with contextlib.suppress(Exception):
                xsdomain.rename_domain(self.xs, dom.domid, old.uuid, new_uuid, name)
        dom.config = DomainConfig(**{**old.to_json(), "name": name, "uuid": new_uuid,
                                     "on_poweroff": "preserve", "on_reboot": "preserve",
                                     "on_crash": "preserve", "on_watchdog": "preserve"})
        self.xen_log(f"Preserving domain {dom.domid} {old.name} with suffix{suffix}")

    # ------------------------------------------------------------------ operations
    async def _vmm(self, dom: Domain, op: str, **args: Any) -> dict[str, Any]:
        if dom.ctl is None:
            raise OpError(f"domain {dom.domid} has no running VMM")
        reply = await dom.ctl.request(op, **args)
        if not reply.get("ok"):
            raise OpError(str(reply.get("error") or f"{op} failed"))
        return reply

    async def pause(self, dom: Domain, pause: bool) -> None:
        if dom.state in ("shutdown", "crashed", "dying"):
            raise OpError(f"domain {dom.domid} ({dom.config.name}) has shut down: "
                          f"{'pause' if pause else 'unpause'} does not apply")
        await self._vmm(dom, "pause" if pause else "unpause")
        dom.state = "paused" if pause else "running"

    async def shutdown(self, dom: Domain, reason: str, force: bool) -> dict[str, Any]:
        """libxl_domain_shutdown / libxl_domain_reboot (Xen 4.17 libxl_domain.c): if the
        guest has PV control, write control/shutdown = reason and wait (up to 60 s) for
        the guest to acknowledge it by clearing the node; else ERROR_NOPARAVIRT, which xl
        reports with its message (-F: xl's ACPI button fallback, see below).
        libxl__domain_pvcontrol_available asks only HVM guests (HVM_PARAM_CALLBACK_IRQ):
        PV and PVH guests always have PV control, so a PVH guest without PV drivers gets
        the request written and the acknowledgement times out, as on Xen."""
        if dom.state in ("shutdown", "crashed", "dying"):
            return {"already": True}
        info = await self._vmm(dom, "info")
        if dom.config.type == "hvm" and not info.get("pv_control"):
            acpi = "power" if reason == "poweroff" else "reset"
            if not force:
                what = "shutdown" if reason == "poweroff" else "reboot"
                raise OpError(f"PV control interface not available: external graceful {what} "
                              f'not possible. Use "-F" to fallback to ACPI {acpi} event.')
            # xl -F sends an ACPI button event (XEN_DOMCTL_SENDTRIGGER_*); for a PVH guest
            # Xen accepts it and does nothing (no emulated ACPI PM block: has_vpm() is false).
            self.xen_log(f"Domain {dom.domid} ({dom.config.name}): -F {reason} refused: "
                         "no PV control and no ACPI")
            raise OpError(f"PV control interface not available, and -F cannot help: a PVH "
                          f"guest has no ACPI {acpi} button to press (use \"xl destroy\" "
                          "to stop it)")
        if self.xs is None:
            raise OpError("xenstored is not running: cannot write control/shutdown")
        path = f"{xsdomain.dom_path(dom.domid)}/control/shutdown"
        self.xen_log(f"Domain {dom.domid} ({dom.config.name}): {reason} requested "
                     "(control/shutdown)")
        try:
            self.xs.write(path, reason)
        except Exception as e:  # noqa: BLE001 - xenstored's error, as libxl returns it
            raise OpError(f"cannot write {path}: {e}") from e
        timeout = pvcontrol_ack_timeout()
        if not await self._pvcontrol_acked(dom, path, timeout):
            raise OpError(f"guest didn't acknowledge control request ({reason}) within "
                          f"{timeout:g} s")
        return {}

    async def _pvcontrol_acked(self, dom: Domain, path: str, timeout: float) -> bool:
        """libxl's pvcontrol_cb: done once the node reads "" or is gone (the guest took
        the request), or the domain has already shut down or gone."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        self._ack_seq += 1
        token = f"pyxen-pvcontrol-{dom.domid}-{self._ack_seq}"

        def fired(_path: str, _token: str) -> None:
            loop.call_soon_threadsafe(changed.set)

        watching = False
        with contextlib.suppress(Exception):
            self.xs.watch(path, token, fired)
            watching = True
        deadline = loop.time() + timeout
        try:
            while True:
                changed.clear()
                if dom.handled_shutdown or dom.destroying or dom.domid not in self.domains:
                    return True
                try:
                    if self.xs.read(path) == b"":
                        return True
                except Exception:  # noqa: BLE001 - ENOENT: removed, as acknowledged
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    # the watch wakes us; the bound only covers a shutdown without a write
                    await asyncio.wait_for(changed.wait(), min(left, 0.5))
        finally:
            if watching:
                with contextlib.suppress(Exception):
                    self.xs.unwatch(path, token)

    async def wait(self, domid: int) -> str:
        """Until the domain has shut down (preserved) or is gone; returns the reason."""
        dom = self.domains.get(domid)
        if dom is None:
            return self.graveyard.get(domid, "gone")
        if dom.handled_shutdown and not dom.destroying and dom.shutdown_reason:
            return dom.shutdown_reason
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        dom.waiters.append(fut)
        return await fut

    def _wake(self, dom: Domain, reason: str) -> None:
        for fut in dom.waiters:
            if not fut.done():
                fut.set_result(reason)
        dom.waiters.clear()

    def graveyard_add(self, domid: int, reason: str) -> None:
        self.graveyard[domid] = reason
        while len(self.graveyard) > GRAVEYARD:
            self.graveyard.popitem(last=False)

    async def destroy(self, dom: Domain, reason: str) -> None:
        if dom.destroying:
            while dom.domid in self.domains:
                await asyncio.sleep(0.02)
            return
        dom.destroying = True
        dom.state = "dying"
        await self._teardown(dom)
        self.domains.pop(dom.domid, None)
        self.graveyard_add(dom.domid, dom.shutdown_reason or reason)
        self.xen_log(f"Domain {dom.domid} ({dom.config.name}) destroyed")
        self._wake(dom, dom.shutdown_reason or reason)

    async def _teardown(self, dom: Domain) -> None:
        """Stop the VMM, then remove xenstore entries, release, remove the domain dir."""
        dom.destroying = True
        if dom.ctl is not None:
            with contextlib.suppress(Exception):
                await dom.ctl.request("destroy", timeout=DESTROY_TIMEOUT_S)
        proc = dom.proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), DESTROY_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), DESTROY_TIMEOUT_S)
        if proc is None and dom.adopted_pid is not None:  # not our child: poll it
            from .recovery import wait_gone
            await wait_gone(dom.adopted_pid, DESTROY_TIMEOUT_S)
        if dom.ctl is not None:
            dom.ctl.close()
        if dom.pid is not None:  # anything the VMM left in its session goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(dom.pid, signal.SIGKILL)
        if self.xs is not None:
            with contextlib.suppress(Exception):  # libxl__devices_destroy (forced)
                await asyncio.get_running_loop().run_in_executor(
                    None, devices.destroy_all, self.xs, dom.domid)
            with contextlib.suppress(Exception):
                xsdomain.remove_domain(self.xs, dom.domid, dom.config.uuid)
            self._release(dom)
        from .schedops import domain_gone
        domain_gone(self, dom)
        _rmtree(dom.dir)

    # ------------------------------------------------------------------ list / info
    async def _refresh(self, dom: Domain) -> None:
        if dom.ctl is None or dom.destroying:
            return
        with contextlib.suppress(OpError, asyncio.TimeoutError, Exception):
            reply = await dom.ctl.request("info", timeout=INFO_TIMEOUT_S)
            if reply.get("ok"):
                dom.info = reply
                st = reply.get("state")
                if st in ("running", "blocked", "paused") and not dom.handled_shutdown:
                    dom.state = st

    def state_letters(self, dom: Domain) -> str:
        st = dom.state
        letters = ["-"] * 6
        if st == "running":
            letters[0] = "r"
        elif st == "blocked":
            letters[1] = "b"
        elif st in ("paused", "building"):
            letters[2] = "p"
        elif st in ("shutdown", "crashed"):
            letters[3] = "s"
            letters[4] = REASON_LETTERS.get(dom.shutdown_reason or "crash", "?")
        elif st == "dying":
            letters[5] = "d"
        return "".join(letters)

    async def list_domains(self, wanted: list[Any] | None) -> list[dict[str, Any]]:
        if wanted:
            doms, seen = [], set()
            for ident in wanted:
                if str(ident) in ("0", "Domain-0"):
                    continue
                try:
                    d = self.find(ident)
                except OpError as e:
                    raise OpError(f"Error: Domain '{ident}' does not exist.") from e
                if d.domid not in seen:
                    seen.add(d.domid)
                    doms.append(d)
            include_dom0 = any(str(i) in ("0", "Domain-0") for i in wanted)
        else:
            doms = sorted(self.domains.values(), key=lambda d: d.domid)
            include_dom0 = True
        await asyncio.gather(*(self._refresh(d) for d in doms))
        out = [self.dom0_entry()] if include_dom0 else []
        for d in sorted(doms, key=lambda d: d.domid):
            info = d.info
            out.append({
                "domid": d.domid, "name": d.config.name, "uuid": d.config.uuid,
                "memory": int(info.get("memory_kib", d.config.memory * 1024)) // 1024,
                "vcpus": int(info.get("vcpus", d.config.vcpus)),
                "state": self.state_letters(d), "status": d.state,
                "cpu_time": float(info.get("cpu_time", 0.0)),
                "shutdown_reason": d.shutdown_reason, "config": d.config.to_json(),
                "console": str(d.dir / "console.sock"),
            })
        return out

    def dom0_entry(self) -> dict[str, Any]:
        mi = self.meminfo()
        used = self.domains_memory_mib()
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)) / ticks
        return {"domid": 0, "name": "Domain-0", "uuid": "00000000-0000-0000-0000-000000000000",
                "memory": max(0, mi.get("MemTotal", 0) // 1024 - used),
                "vcpus": os.cpu_count() or 1, "state": "r-----", "status": "running",
                "cpu_time": busy, "shutdown_reason": None, "config": None}

    def host_info(self) -> list[list[str]]:
        """`xl info`'s keys in its order (output_nodeinfo, _physinfo, _xeninfo)."""
        u = os.uname()
        mi = self.meminfo()
        ncpu = os.cpu_count() or 1
        mhz = 0.0
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    mhz = float(line.split(":")[1])
                    break
        version = f"{pyxen.XEN_MAJOR}.{pyxen.XEN_MINOR}{pyxen.XEN_EXTRAVERSION}"
        kvm = "kvm" if os.path.exists("/dev/kvm") else "no /dev/kvm"
        rows = [
            ("host", u.nodename), ("release", u.release), ("version", u.version),
            ("machine", u.machine), ("nr_cpus", str(ncpu)), ("max_cpu_id", str(ncpu - 1)),
            ("nr_nodes", str(_nr_nodes())), ("cores_per_socket", str(ncpu)),
            ("threads_per_core", "1"), ("cpu_mhz", f"{mhz:.3f}"),
            ("virt_caps", " hvm hap"),
            ("total_memory", str(mi.get("MemTotal", 0) // 1024)),
            ("free_memory", str(self.free_memory_mib())),
            ("sharing_freed_memory", "0"), ("sharing_used_memory", "0"),
            ("outstanding_claims", "0"), ("free_cpus", "0"),
            ("xen_major", str(pyxen.XEN_MAJOR)), ("xen_minor", str(pyxen.XEN_MINOR)),
            ("xen_extra", pyxen.XEN_EXTRAVERSION), ("xen_version", version),
            ("xen_caps", "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"),
            ("xen_scheduler", "credit"), ("xen_pagesize", "4096"),
            ("platform_params", "virt_start=0xffff800000000000"),
            ("xen_changeset", f"pyxen {pyxen.__version__}"),
            ("xen_commandline", f"pyxen hostd on {kvm}"),
            ("cc_compiler", f"Python {platform.python_version()}"),
            ("cc_compile_by", "pyxen"), ("cc_compile_domain", ""),
            ("cc_compile_date", ""), ("build_id", ""),
            ("xend_config_format", "4"),
        ]
        return [list(r) for r in rows]


def _nr_nodes() -> int:
    try:
        return max(1, len([p for p in os.listdir("/sys/devices/system/node")
                           if p.startswith("node") and p[4:].isdigit()]))
    except OSError:
        return 1


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


async def amain(root: Path) -> int:
    hostd = Hostd(root)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, hostd.stopping.set)
    await hostd.start()
    await hostd.stopping.wait()
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
