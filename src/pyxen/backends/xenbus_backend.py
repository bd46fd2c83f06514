"""The backend half of xenbus, inside a domain's VMM: what Linux's xenbus_probe_backend
and QEMU's hw/xen/xen-bus.c do for their backends.

The VMM connects to hostd's xenstored as dom0 (pyxen.xenstore.client), watches
``/local/domain/0/backend/<kind>/<domid>`` for each device kind it serves, and runs the
XenbusState handshake of every device the toolstack creates there (toolstack/devices.py):

  new backend dir         -> probe(): the backend writes its features; state InitWait
  hotplug-status=connected and frontend Initialised/Connected
                          -> connect(): map the rings, bind the event channels; Connected
                             (a DeviceError is xenbus_dev_fatal: ``error`` node, Closing)
  frontend Closing        -> disconnect(); Closing
  frontend Closed/gone    -> disconnect(); Closed (a frontend that comes back Initialising
                             finds InitWait again)
  toolstack: online=0 and state=Closing
                          -> if the frontend is still connected, Closing until it closes;
                             then disconnect(); Closed (the toolstack waits for Closed)
  backend dir removed     -> disconnect(); the device is forgotten

A device backend subclasses XenbusDevice and sees only this small interface (QEMU's
evtchn/gnttab backend ops): its xenstore nodes (read/write, read_frontend), ``bind(port)``
for the frontend's event channel (a BackendPort: fileno/consume/notify), ``map(ref)`` /
``unmap`` / ``copy_from`` / ``copy_to`` for granted pages (GrantTable's backend API), and
``log``. It never touches the hypervisor's tables. See docs/devices.md.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..hypervisor.event_channel import BackendEventChannels, BackendPort
from ..hypervisor.grant_table import GrantMapping, GrantTable

# xen/io/xenbus.h
Unknown, Initialising, InitWait, Initialised, Connected, Closing, Closed = range(7)
STATE_NAMES = {0: "Unknown", 1: "Initialising", 2: "InitWait", 3: "Initialised",
               4: "Connected", 5: "Closing", 6: "Closed", 7: "Reconfiguring",
               8: "Reconfigured"}


class DeviceError(Exception):
    """A frontend (or backing store) problem: the device fails, the VMM does not."""


class XenbusDevice:
    """One backend device. Subclasses set `kind` and override the hooks."""

    kind = ""
    needs_hotplug = True  # wait for the toolstack's hotplug-status = connected

    def __init__(self, bus: XenbusBackendBus, devid: int) -> None:
        self.bus = bus
        self.domid = bus.domid
        self.devid = devid
        self.backend_path = f"/local/domain/0/backend/{self.kind}/{bus.domid}/{devid}"
        self.frontend_path = ""
        self.state = Unknown  # what we last wrote to our state node
        self.closing = False  # the toolstack asked us to close
        self.connected = False

    # --- the backend's view: its nodes, the frontend's nodes ----------------------------

    def read(self, node: str) -> str | None:
        return self.bus.read(f"{self.backend_path}/{node}")

    def read_int(self, node: str, default: int | None = None) -> int | None:
        return _to_int(self.read(node), default)

    def read_frontend(self, node: str) -> str | None:
        if not self.frontend_path:
            return None
        return self.bus.read(f"{self.frontend_path}/{node}")

    def read_frontend_int(self, node: str, default: int | None = None) -> int | None:
        return _to_int(self.read_frontend(node), default)

    def write(self, node: str, value: str | int) -> None:
        self.bus.xs.write(f"{self.backend_path}/{node}", str(value))

    def write_nodes(self, nodes: dict[str, str | int]) -> None:
        """Several nodes in one transaction (the frontend sees them all or none)."""
        def body(tx: int) -> None:
            for k, v in nodes.items():
                self.bus.xs.write(f"{self.backend_path}/{k}", str(v), tx)
        self.bus.xs.run_transaction(body)

    def log(self, msg: str) -> None:
        self.bus.log(f"{self.kind}-{self.domid}-{self.devid}: {msg}")

    # --- the backend's view: event channels and grants ----------------------------------

    def bind(self, port: int) -> BackendPort:
        """EVTCHNOP_bind_interdomain to the frontend's unbound port."""
        return self.bus.dom0.connect(self.domid, port)

    def map(self, ref: int, readonly: bool = False) -> GrantMapping:
        """GNTTABOP_map_grant_ref of one frontend page (GrantError when refused)."""
        return self.bus.gnttab.map(ref, domid=self.bus.dom0.domid, readonly=readonly)

    def unmap(self, m: GrantMapping) -> None:
        with contextlib.suppress(Exception):  # revoked with the domain: nothing to undo
            self.bus.gnttab.unmap(m)

    def copy_from(self, ref: int, offset: int, length: int) -> bytes:
        return self.bus.gnttab.copy_from(ref, offset, length, domid=self.bus.dom0.domid)

    def copy_to(self, ref: int, offset: int, data: bytes) -> None:
        self.bus.gnttab.copy_to(ref, offset, data, domid=self.bus.dom0.domid)

    # --- hooks --------------------------------------------------------------------------

    def probe(self) -> None:
        """Before InitWait: write the backend's feature nodes."""

    def ready(self) -> bool:
        """May connect now (default: the hotplug step has succeeded)."""
        return not self.needs_hotplug or self.read("hotplug-status") == "connected"

    def connect(self) -> None:
        """The frontend is Initialised: map its rings, bind its channels, start serving.
        Raise DeviceError to fail the device."""

    def disconnect(self) -> None:
        """Stop serving: unmap, unbind. Called once per connect, and at teardown."""

    # --- the state machine (run by the bus thread) ---------------------------------------

    def set_state(self, state: int) -> None:
        """Write our state, unless the toolstack has removed the device meanwhile (a
        write would create a stray node)."""
        if self.state == state:
            return
        self.state = state
        path = f"{self.backend_path}/state"

        def body(tx: int) -> None:
            self.bus.xs.read(path, tx)  # ENOENT: gone, write nothing
            self.bus.xs.write(path, str(state), tx)

        with contextlib.suppress(Exception):
            self.bus.xs.run_transaction(body)

    def _disconnect(self) -> None:
        if self.connected:
            self.connected = False
            try:
                self.disconnect()
            except Exception as e:  # noqa: BLE001 - must not stop the bus
                self.log(f"disconnect failed: {type(e).__name__}: {e}")

    def fatal(self, why: str) -> None:
        """xenbus_dev_fatal: the error goes to the backend's ``error`` node and
        /local/domain/0/error/..., the device to Closing."""
        self.log(why)
        with contextlib.suppress(Exception):
            self.write("error", why)
        self._disconnect()
        self.set_state(Closing)

    def update(self) -> None:
        if self.state == Unknown:
            self.frontend_path = self.read("frontend") or ""
            try:
                self.probe()
            except DeviceError as e:
                self.fatal(str(e))
                return
            self.set_state(InitWait)
        online = self.read_int("online", 0)
        node = self.read_int("state")
        if node == Closing and self.state != Closing:
            self.closing = True
        fstate = self.read_frontend_int("state", Unknown)
        if self.closing or not online:
            if self.connected and fstate in (Initialised, Connected):
                self.set_state(Closing)  # the frontend sees it and closes first
                return
            self._disconnect()
            self.set_state(Closed)
            return
        if fstate in (Initialised, Connected):
            if self.state == InitWait and self.ready():
                try:
                    self.connect()
                except DeviceError as e:
                    self.fatal(f"connecting: {e}")
                    return
                except Exception as e:  # noqa: BLE001 - a backend bug fails the device
                    self.fatal(f"connecting: {type(e).__name__}: {e}")
                    return
                self.connected = True
                self.set_state(Connected)
        elif fstate == Closing:
            self._disconnect()
            self.set_state(Closing)
        elif fstate in (Closed, Unknown):
            if self.state not in (InitWait, Initialising):
                self._disconnect()
                self.set_state(Closed)
        elif fstate == Initialising and self.state == Closed:
            self.set_state(InitWait)  # the frontend reconnects


def _to_int(v: str | None, default: int | None) -> int | None:
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        return default


class XenbusBackendBus:
    """All backend devices of one domain, served from its VMM."""

    def __init__(self, domid: int, dom0: BackendEventChannels, gnttab: GrantTable,
                 kinds: dict[str, type[XenbusDevice]], xenstored: str,
                 report: Callable[[str], None] = lambda s: None) -> None:
        from ..xenstore.client import XenstoreClient

        self.domid = domid
        self.dom0 = dom0
        self.gnttab = gnttab
        self.kinds = kinds
        self.log = report
        self.xs = XenstoreClient(xenstored)
        self.devices: dict[tuple[str, int], XenbusDevice] = {}
        self.events: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.watched_frontends: dict[str, str] = {}  # frontend path -> token
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"xenbus-backend-d{domid}")

    def read(self, path: str) -> str | None:
        try:
            return self.xs.read(path).decode(errors="replace")
        except Exception:  # noqa: BLE001 - ENOENT: absent
            return None

    def start(self) -> XenbusBackendBus:
        for kind in self.kinds:
            self.xs.watch(f"/local/domain/0/backend/{kind}/{self.domid}", f"backend:{kind}",
                          self.events)  # type: ignore[arg-type]
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            ev = self.events.get()
            if ev is None or self._stopped:
                return
            while True:  # coalesce a burst of events into one scan
                try:
                    more = self.events.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    return
            try:
                self.scan()
            except Exception as e:  # noqa: BLE001 - xenstored gone, or a bug: keep going
                if self._stopped:
                    return
                self.log(f"xenbus backend: {type(e).__name__}: {e}")

    def scan(self) -> None:
        present: set[tuple[str, int]] = set()
        for kind, cls in self.kinds.items():
            base = f"/local/domain/0/backend/{kind}/{self.domid}"
            try:
                names = self.xs.directory(base)
            except Exception:  # noqa: BLE001 - ENOENT: no devices of this kind
                names = []
            for name in names:
                if not name.isdigit():
                    continue
                key = (kind, int(name))
                if self.read(f"{base}/{name}/state") is None:
                    continue  # being created or removed
                present.add(key)
                dev = self.devices.get(key)
                if dev is None:
                    dev = self.devices[key] = cls(self, int(name))
                dev.update()
                self._watch_frontend(dev)
        for key in list(self.devices):
            if key not in present:
                dev = self.devices.pop(key)
                dev._disconnect()
                self._unwatch_frontend(dev.frontend_path)

    def _watch_frontend(self, dev: XenbusDevice) -> None:
        fp = dev.frontend_path
        if fp and fp not in self.watched_frontends:
            token = f"frontend:{dev.kind}:{dev.devid}"
            self.watched_frontends[fp] = token
            with contextlib.suppress(Exception):
                self.xs.watch(fp, token, self.events)  # type: ignore[arg-type]

    def _unwatch_frontend(self, fp: str) -> None:
        token = self.watched_frontends.pop(fp, None)
        if token is not None:
            with contextlib.suppress(Exception):
                self.xs.unwatch(fp, token)

    def close(self) -> None:
        """Domain destruction: every device stops; the toolstack removes the nodes."""
        self._stopped = True
        self.events.put(None)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        for dev in list(self.devices.values()):
            dev._disconnect()
        self.devices.clear()
        with contextlib.suppress(Exception):
            self.xs.close()


def start_backends(d: Any, dom0: BackendEventChannels, xenstored: str,
                   kinds: dict[str, type[XenbusDevice]]) -> XenbusBackendBus | None:
    """The VMM's device backends, or None (logged) when xenstored cannot be reached."""
    if not os.path.exists(xenstored):
        d.log(f"d{d.domid}: no xenstored at {xenstored}: PV device backends are off")
        return None
    try:
        return XenbusBackendBus(d.domid, dom0, d.grant_table, kinds, xenstored,
                                report=lambda s: d.log(f"d{d.domid}: {s}")).start()
    except OSError as e:
        d.log(f"d{d.domid}: cannot reach xenstored ({e}): PV device backends are off")
        return None
