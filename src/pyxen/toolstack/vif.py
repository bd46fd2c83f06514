"""Virtual network interfaces (libxl_nic.c): the nodes libxl writes for a ``vif = [...]``
entry or ``xl network-attach``, and the hotplug step.

Backend nodes (libxl__set_xenstore_nic): script (absolute, in /etc/xen/scripts when
relative), vifname, mac, ip, gatewaydev, rate ("BYTES,USECS"), mtu (when not 1500),
bridge, handle, type ("vif") and hotplug-status = "" (so the backend waits for the hotplug
step before connecting). Frontend nodes: handle, mac, trusted, mtu. The backend (netback
in the domain's VMM) adds its feature-* nodes and makes the TAP device vifDOMID.DEVID
before it goes to InitWait.

The hotplug step runs as libxl runs Xen's vif scripts: ``SCRIPT online`` after InitWait
and ``SCRIPT offline`` once the backend has closed, with XENBUS_PATH, XENBUS_TYPE=vif,
XENBUS_BASE_PATH, script, vif (the interface name) and netdev (gatewaydev) in the
environment and XENSTORED_PATH for the script's xenstore-* calls; the script writes
hotplug-status = connected (vif-bridge's `success`). Without script= pyxen's built-in step
does what vif-bridge does: the TAP joins the bridge (created if missing) through netlink.
"""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any

from pyxen.backends import tap
from pyxen.toolstack import devices
from pyxen.toolstack.devices import Device, DeviceError, XenbusState
from pyxen.toolstack.vifspec import (
    DEFAULT_BRIDGE,
    DEFAULT_MTU,
    NicSpec,
    parse_mac,
    random_mac,
    vif_ifname,
)

KIND = "vif"


def device(domid: int, nic: NicSpec) -> Device:
    assert nic.devid is not None
    return Device(KIND, domid, nic.devid)


def setdefault(nic: NicSpec) -> NicSpec:
    """libxl__device_nic_setdefault (the parts that apply to a PVH guest's vif)."""
    if nic.mac is None:
        nic.mac = random_mac()
    if nic.bridge is None:
        nic.bridge = DEFAULT_BRIDGE
    if nic.type is None:
        nic.type = "vif"
    return nic


def nodes(domid: int, nic: NicSpec) -> tuple[dict[str, str], dict[str, str]]:
    assert nic.devid is not None and nic.mac is not None
    back: dict[str, str] = {}
    if nic.script:
        back["script"] = devices.script_path(nic.script)
    if nic.vifname:
        back["vifname"] = nic.vifname
    back["mac"] = nic.mac
    if nic.ip:
        back["ip"] = nic.ip
    if nic.gatewaydev:
        back["gatewaydev"] = nic.gatewaydev
    if nic.rate_interval_usecs:
        back["rate"] = f"{nic.rate_bytes_per_interval},{nic.rate_interval_usecs}"
    mtu = nic.mtu or DEFAULT_MTU
    if mtu != DEFAULT_MTU:
        back["mtu"] = str(mtu)
    back["bridge"] = nic.bridge or DEFAULT_BRIDGE
    back["handle"] = str(nic.devid)
    back["type"] = nic.type or "vif"
    back["hotplug-status"] = ""
    front = {"handle": str(nic.devid), "mac": nic.mac, "trusted": "1", "mtu": str(mtu)}
    return back, front


def hotplug_env(xs: Any, dev: Device) -> dict[str, str]:
    bp = dev.backend_path
    return {"vif": _read(xs, f"{bp}/vifname") or f"vif{dev.domid}.{dev.devid}",
            "netdev": _read(xs, f"{bp}/gatewaydev") or ""}


def _read(xs: Any, path: str) -> str | None:
    return devices._read(xs, path)


def run_hotplug(xs: Any, dev: Device, action: str) -> None:
    """`script online|offline`, or the built-in bridge step; ``online`` ends with
    hotplug-status = connected (an error in it is libxl's hotplug failure)."""
    bp = dev.backend_path
    script = _read(xs, f"{bp}/script")
    ifname = hotplug_env(xs, dev)["vif"]
    if not script:
        if action == "online":
            mtu = _read(xs, f"{bp}/mtu")
            try:
                tap.bridge_attach(ifname, _read(xs, f"{bp}/bridge") or DEFAULT_BRIDGE,
                                  int(mtu) if mtu and mtu.isdigit() else None)
            except tap.HostNetError as e:
                raise DeviceError(str(e)) from None
            xs.write(f"{bp}/hotplug-status", "connected")
        else:
            tap.bridge_detach(ifname)
        return
    env = devices.hotplug_env(dev, {"script": script, **hotplug_env(xs, dev)})
    try:
        r = subprocess.run([script, action], env=env, capture_output=True, text=True,
                           timeout=devices.HOTPLUG_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DeviceError(f"unable to run hotplug script {script} {action}: {e}") from None
    if action == "online":
        status = _read(xs, f"{bp}/hotplug-status")
        if r.returncode != 0 or status == "error":
            why = _read(xs, f"{bp}/hotplug-error") or \
                (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise DeviceError(f"script: {script} failed; error detected: {why}")
        if not status:
            xs.write(f"{bp}/hotplug-status", "connected")


def attach(xs: Any, domid: int, nic: NicSpec) -> Device:
    """libxl_device_nic_add: directories, the backend's InitWait, the hotplug step; on
    any failure everything is removed again."""
    setdefault(nic)
    dev = device(domid, nic)
    if devices.exists(xs, dev):
        raise DeviceError(f"device vif {nic.devid} already exists for domain {domid}")
    back, front = nodes(domid, nic)
    devices.add(xs, dev, back, front)
    try:
        st = devices.wait_backend(xs, dev, {XenbusState.InitWait, XenbusState.Connected},
                                  devices.INITWAIT_TIMEOUT_S)
        if st not in (XenbusState.InitWait, XenbusState.Connected):
            err = _read(xs, f"{dev.backend_path}/error")
            raise DeviceError(f"device {dev.backend_path} not ready (backend state {st})"
                              + (f": {err}" if err else ""))
        run_hotplug(xs, dev, "online")
    except BaseException:
        with contextlib.suppress(Exception):
            run_hotplug(xs, dev, "offline")
        devices.destroy(xs, dev)
        raise
    return dev


def detach(xs: Any, dev: Device, force: bool = False) -> bool:
    """libxl_device_nic_remove (or _destroy with force): online=0 + Closing, wait for
    Closed (10 s), `script offline`, the directories go. True if the backend closed."""
    bp = dev.backend_path
    closed = True
    if not force and _read(xs, bp) is not None:
        def tx_body(tx: int) -> None:
            if devices._read(xs, f"{bp}/state", tx) is None:
                return
            xs.write(f"{bp}/online", "0", tx)
            xs.write(f"{bp}/state", str(int(XenbusState.Closing)), tx)

        with contextlib.suppress(Exception):
            xs.run_transaction(tx_body)
        st = devices.wait_backend(xs, dev, {XenbusState.Closed}, devices.DESTROY_TIMEOUT_S)
        closed = st is None or st == XenbusState.Closed
    with contextlib.suppress(DeviceError):
        run_hotplug(xs, dev, "offline")
    devices.destroy(xs, dev)
    return closed


def find(xs: Any, domid: int, ident: str) -> Device | None:
    """xl network-detach's device: a devid, or a MAC (when it has a ':')."""
    devs = devices.list_devices(xs, domid, KIND)
    if ":" in ident:
        mac = parse_mac(ident)
        for d in devs:
            if mac is not None and _read(xs, f"{d.frontend_path}/mac") == mac:
                return d
        return None
    try:
        devid = int(ident)
    except ValueError:
        return None
    return next((d for d in devs if d.devid == devid), None)


def info(xs: Any, dev: Device) -> dict[str, Any]:
    """libxl_device_nic_getinfo: the row of xl network-list."""
    fp = dev.frontend_path

    def num(path: str) -> int:
        v = _read(xs, path)
        try:
            return int(v) if v is not None else -1
        except ValueError:
            return -1

    return {"devid": dev.devid, "backend_id": dev.backend_domid,
            "mac": _read(xs, f"{fp}/mac") or "00:00:00:00:00:00",
            "state": num(f"{fp}/state"), "evtch": num(f"{fp}/event-channel"),
            "rref_tx": num(f"{fp}/tx-ring-ref"), "rref_rx": num(f"{fp}/rx-ring-ref"),
            "backend": dev.backend_path,
            "ifname": _read(xs, f"{dev.backend_path}/vifname") or
            vif_ifname(dev.domid, dev.devid, NicSpec())}
