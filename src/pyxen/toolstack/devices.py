"""PV devices in xenstore, the way libxl sets them up and tears them down (libxl_device.c).

A split device is two xenstore directories and a handshake:

  backend   /local/domain/<B>/backend/<kind>/<domid>/<devid>   owned by B, readable by domid
  frontend  /local/domain/<domid>/device/<kind>/<devid>         owned by domid, readable by B
  libxl     /libxl/<domid>/device/<kind>/<devid>                dom0 only (frontend, backend)

Both get ``state`` = XenbusStateInitialising, the links (backend's ``frontend`` and
``frontend-id``, frontend's ``backend`` and ``backend-id``) and ``online`` = 1, all in one
transaction (libxl__device_generic_add). The backend (here: the domain's VMM, see
backends/xenbus_backend.py) answers with state InitWait; then libxl runs the hotplug
script (``script`` node; without one pyxen's built-in step just checks the backing
object), which writes ``hotplug-status`` = connected, and the backend may connect once
the frontend is ready.

Removal (libxl__initiate_device_generic_remove): ``online`` = 0 and backend ``state`` =
Closing in one transaction, wait (10 s, LIBXL_DESTROY_TIMEOUT) for the backend to reach
Closed, then the hotplug script's ``remove``, then the three directories go (and their
empty parents). ``force`` skips the wait. A device kind only supplies its nodes: see
toolstack/vbd.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import subprocess
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from pyxen import paths

DESTROY_TIMEOUT_S = 10.0  # LIBXL_DESTROY_TIMEOUT
INITWAIT_TIMEOUT_S = 10.0  # LIBXL_INIT_TIMEOUT
HOTPLUG_TIMEOUT_S = 10.0  # LIBXL_HOTPLUG_TIMEOUT
SCRIPT_DIR = "/etc/xen/scripts"  # XEN_SCRIPT_DIR: relative script= names are found here

_tokens = itertools.count(1)


class XenbusState(IntEnum):
    """xen/io/xenbus.h"""

    Unknown = 0
    Initialising = 1
    InitWait = 2
    Initialised = 3
    Connected = 4
    Closing = 5
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8


class DeviceError(Exception):
    """One line for the user (libxl's error, worded for xl)."""


@dataclass(frozen=True)
class Device:
    """libxl__device: which device of which domain, served by which backend domain."""

    kind: str  # "vbd", "vif", ...
    domid: int
    devid: int
    backend_domid: int = 0

    @property
    def backend_path(self) -> str:
        return f"/local/domain/{self.backend_domid}/backend/{self.kind}/{self.domid}/{self.devid}"

    @property
    def frontend_path(self) -> str:
        return f"/local/domain/{self.domid}/device/{self.kind}/{self.devid}"

    @property
    def libxl_path(self) -> str:
        return f"/libxl/{self.domid}/device/{self.kind}/{self.devid}"


def _read(xs: Any, path: str, tx: int = 0) -> str | None:
    try:
        return xs.read(path, tx).decode(errors="replace")
    except Exception:  # noqa: BLE001 - ENOENT and friends: absent
        return None


def read_state(xs: Any, path: str) -> int | None:
    v = _read(xs, f"{path}/state")
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def exists(xs: Any, dev: Device) -> bool:
    return _read(xs, dev.backend_path) is not None or _read(xs, dev.frontend_path) is not None


def add(xs: Any, dev: Device, back: dict[str, str], front: dict[str, str]) -> None:
    """libxl__device_generic_add: both directories, with their permissions, atomically.

    `back` and `front` are the kind's own nodes (relative names); the links, ``state``
    and ``online`` are added here. Raises DeviceError if the device already exists."""
    bp, fp, lp = dev.backend_path, dev.frontend_path, dev.libxl_path
    back_perms = [f"n{dev.backend_domid}", f"r{dev.domid}"]
    front_perms = [f"n{dev.domid}", f"r{dev.backend_domid}"]
    nodes_b = {"frontend": fp, "frontend-id": str(dev.domid), "online": "1",
               "state": str(int(XenbusState.Initialising)), **back}
    nodes_f = {"backend": bp, "backend-id": str(dev.backend_domid),
               "state": str(int(XenbusState.Initialising)), **front}

    def tx_body(tx: int) -> None:
        if _read(xs, bp, tx) is not None or _read(xs, fp, tx) is not None:
            raise DeviceError("device already exists in xenstore")
        xs.write(lp, "", tx)
        xs.set_perms(lp, [f"n{dev.backend_domid}"], tx)
        xs.write(f"{lp}/frontend", fp, tx)
        xs.write(f"{lp}/backend", bp, tx)
        xs.write(fp, "", tx)
        xs.set_perms(fp, front_perms, tx)
        for k, v in nodes_f.items():
            xs.write(f"{fp}/{k}", v, tx)
        xs.write(bp, "", tx)
        xs.set_perms(bp, back_perms, tx)
        for k, v in nodes_b.items():
            xs.write(f"{bp}/{k}", v, tx)

    xs.run_transaction(tx_body)


class _Waiter:
    """A xenstore watch on one path whose events land in a queue (the client delivers
    them on its reader thread; nothing is done there)."""

    def __init__(self, xs: Any, path: str) -> None:
        self.xs, self.path = xs, path
        self.token = f"pyxen-dev-{os.getpid()}-{next(_tokens)}"
        self.q: queue.Queue[tuple[str, str]] = queue.Queue()
        xs.watch(path, self.token, self.q)

    def wait(self, timeout: float) -> None:
        with contextlib.suppress(queue.Empty):
            self.q.get(timeout=max(0.0, timeout))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.xs.unwatch(self.path, self.token)


def wait_backend(xs: Any, dev: Device, want: set[int], timeout: float) -> int | None:
    """Until the backend's state is one of `want` (returned), gone (None), or timeout
    (the last state seen, or None)."""
    w = _Waiter(xs, f"{dev.backend_path}/state")
    try:
        deadline = time.monotonic() + timeout
        while True:
            st = read_state(xs, dev.backend_path)
            if st is None or st in want:
                return st
            left = deadline - time.monotonic()
            if left <= 0:
                return st
            w.wait(min(left, 0.5))
    finally:
        w.close()


def hotplug_env(dev: Device, extra: dict[str, str] | None = None) -> dict[str, str]:
    """libxl__get_hotplug_env: what Xen's /etc/xen/scripts expect, plus XENSTORED_PATH so
    their xenstore-* calls reach this host's xenstored."""
    env = dict(os.environ)
    env.update({
        "script": "", "XENBUS_TYPE": dev.kind, "XENBUS_PATH": dev.backend_path,
        "XENBUS_BASE_PATH": f"/local/domain/{dev.backend_domid}/backend",
        "XENSTORED_PATH": str(paths.xenstored_socket()),
    })
    env.update(extra or {})
    return env


def script_path(script: str) -> str:
    return script if os.path.isabs(script) else str(Path(SCRIPT_DIR) / script)


def run_hotplug(xs: Any, dev: Device, action: str, extra_env: dict[str, str] | None = None,
                builtin: Any = None) -> None:
    """The hotplug step (libxl__get_hotplug_script_info + device_hotplug): the backend's
    ``script`` node names the script, run as ``SCRIPT add|remove`` with Xen's environment;
    a non-zero exit is an error (with the script's ``hotplug-error`` node when it wrote
    one). Without a script, `builtin(action)` does what Xen's default script would."""
    script = _read(xs, f"{dev.backend_path}/script")
    if not script:
        if builtin is not None:
            builtin(action)
        if action == "add":
            xs.write(f"{dev.backend_path}/hotplug-status", "connected")
        return
    env = hotplug_env(dev, {"script": script, **(extra_env or {})})
    try:
        r = subprocess.run([script, action], env=env, capture_output=True, text=True,
                           timeout=HOTPLUG_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DeviceError(f"unable to run hotplug script {script} {action}: {e}") from None
    if r.returncode != 0:
        why = _read(xs, f"{dev.backend_path}/hotplug-error") or \
            (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise DeviceError(f"script: {script} failed; error detected: {why}")
    if action == "add" and _read(xs, f"{dev.backend_path}/hotplug-status") is None:
        xs.write(f"{dev.backend_path}/hotplug-status", "connected")


def attach(xs: Any, dev: Device, back: dict[str, str], front: dict[str, str],
           builtin_hotplug: Any = None, timeout: float = INITWAIT_TIMEOUT_S) -> None:
    """libxl's device add: the directories, the backend's InitWait, the hotplug step.
    On any failure the device is removed again (nothing left behind)."""
    add(xs, dev, back, front)
    try:
        st = wait_backend(xs, dev, {XenbusState.InitWait, XenbusState.Connected}, timeout)
        if st not in (XenbusState.InitWait, XenbusState.Connected):
            err = _read(xs, f"/local/domain/{dev.backend_domid}/error/backend/{dev.kind}/"
                            f"{dev.domid}/{dev.devid}/error")
            raise DeviceError(f"device {dev.backend_path} not ready (backend state "
                              f"{st}){': ' + err if err else ''}")
        run_hotplug(xs, dev, "add", builtin=builtin_hotplug)
    except BaseException:
        destroy(xs, dev)
        raise


def detach(xs: Any, dev: Device, force: bool = False,
           timeout: float = DESTROY_TIMEOUT_S) -> bool:
    """libxl's device remove (or destroy with force): True if the backend closed in
    time, False if it had to be removed without its agreement."""
    bp = dev.backend_path
    closed = True
    if not force and _read(xs, bp) is not None:
        def tx_body(tx: int) -> None:
            if _read(xs, f"{bp}/state", tx) is None:
                return
            xs.write(f"{bp}/online", "0", tx)
            xs.write(f"{bp}/state", str(int(XenbusState.Closing)), tx)

        with contextlib.suppress(Exception):
            xs.run_transaction(tx_body)
        st = wait_backend(xs, dev, {XenbusState.Closed}, timeout)
        closed = st is None or st == XenbusState.Closed
    with contextlib.suppress(DeviceError):
        run_hotplug(xs, dev, "remove")
    destroy(xs, dev)
    return closed


def destroy(xs: Any, dev: Device) -> None:
    """libxl__device_destroy: the three directories go, then their empty parents."""
    def tx_body(tx: int) -> None:
        for p in (dev.frontend_path, dev.backend_path, dev.libxl_path):
            with contextlib.suppress(Exception):
                xs.rm(p, tx)

    with contextlib.suppress(Exception):
        xs.run_transaction(tx_body)
    for p, stop in ((dev.backend_path, f"/local/domain/{dev.backend_domid}"),
                    (dev.frontend_path, f"/local/domain/{dev.domid}/device"),
                    (dev.libxl_path, f"/libxl/{dev.domid}/device")):
        cleanup_parents(xs, p, stop)


def cleanup_parents(xs: Any, path: str, stop: str) -> None:
    """libxl__xs_path_cleanup: remove empty directories above `path`, below `stop`."""
    parent = path.rsplit("/", 1)[0]
    while parent.startswith(stop + "/"):
        try:
            if xs.directory(parent):
                return
            xs.rm(parent)
        except Exception:  # noqa: BLE001 - gone or not ours: stop
            return
        parent = parent.rsplit("/", 1)[0]


def list_devices(xs: Any, domid: int, kind: str) -> list[Device]:
    """The domain's devices of a kind, from its frontend directory (libxl__device_list)."""
    out = []
    try:
        names = xs.directory(f"/local/domain/{domid}/device/{kind}")
    except Exception:  # noqa: BLE001 - none
        return []
    for name in names:
        if not name.isdigit():
            continue
        fp = f"/local/domain/{domid}/device/{kind}/{name}"
        bid = _read(xs, f"{fp}/backend-id")
        out.append(Device(kind, domid, int(name),
                          int(bid) if bid and bid.isdigit() else 0))
    return sorted(out, key=lambda d: d.devid)


def destroy_all(xs: Any, domid: int) -> None:
    """libxl__devices_destroy for a dying domain: every device of every kind, forced
    (the VMM serving the backends is gone)."""
    try:
        kinds = xs.directory(f"/local/domain/{domid}/device")
    except Exception:  # noqa: BLE001
        kinds = []
    for kind in kinds:
        for dev in list_devices(xs, domid, kind):
            with contextlib.suppress(Exception):
                run_hotplug(xs, dev, "remove")
            destroy(xs, dev)
    for p in (f"/local/domain/0/backend/{k}/{domid}" for k in kinds):
        with contextlib.suppress(Exception):
            xs.rm(p)


def frontend_info(xs: Any, dev: Device) -> dict[str, int | str]:
    """libxl_device_*_getinfo's fields: frontend state, event channel, ring ref."""
    def num(path: str) -> int:
        v = _read(xs, path)
        try:
            return int(v) if v is not None else -1
        except ValueError:
            return -1

    fp = dev.frontend_path
    return {"devid": dev.devid, "backend_id": dev.backend_domid, "frontend_id": dev.domid,
            "state": num(f"{fp}/state"), "evtch": num(f"{fp}/event-channel"),
            "rref": num(f"{fp}/ring-ref"), "backend": dev.backend_path,
            "frontend": fp}
