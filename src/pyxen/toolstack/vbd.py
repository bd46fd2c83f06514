"""Virtual block devices (libxl_disk.c): the nodes libxl writes for a ``disk = [...]``
entry, and the built-in hotplug step for disks without ``script=``.

Backend nodes: params (the target), mode (r/w), type (phy or qdisk), device-type
(disk/cdrom), removable, bootable, dev (the vdev), physical-device-path, script (when
given, made absolute in /etc/xen/scripts as libxl does), discard-enable, direct-io-safe,
trusted. Frontend nodes: virtual-device (the Xen device number), device-type, trusted.
pyxen's blkback (backends/blkback.py, in the domain's VMM) adds its own nodes (sectors,
info, features...) as Xen's blkback does.
"""

from __future__ import annotations

import os
from typing import Any

from pyxen.toolstack import devices
from pyxen.toolstack.devices import Device, DeviceError
from pyxen.toolstack.xldisk import DiskSpec, devid_to_vdev

KIND = "vbd"


def device(domid: int, disk: DiskSpec) -> Device:
    return Device(KIND, domid, disk.devid)


def nodes(domid: int, disk: DiskSpec) -> tuple[dict[str, str], dict[str, str]]:
    """(backend nodes, frontend nodes) of libxl's device_disk_add."""
    btype = disk.backendtype or ("qdisk" if disk.format not in ("raw", "empty") else "phy")
    back = {
        "params": disk.target or "",
        "mode": disk.mode,
        "type": btype,
        "device-type": "cdrom" if disk.is_cdrom else "disk",
        "removable": "1" if disk.removable else "0",
        "bootable": "1",
        "dev": disk.vdev or "",
        "physical-device-path": disk.target or "",
        "discard-enable": "0" if disk.discard is False else "1",
        "trusted": "0" if disk.trusted is False else "1",
    }
    if disk.direct_io_safe:
        back["direct-io-safe"] = "1"
    if disk.script:
        back["script"] = devices.script_path(disk.script)
    front = {
        "virtual-device": str(disk.devid),
        "device-type": back["device-type"],
        "trusted": back["trusted"],
    }
    return back, front


def _builtin_hotplug(disk: DiskSpec) -> Any:
    """What /etc/xen/scripts/block checks before the backend may open the target."""
    def run(action: str) -> None:
        if action != "add" or not disk.target:
            return
        mode = os.O_RDWR if disk.readwrite else os.O_RDONLY
        try:
            fd = os.open(disk.target, mode | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError(f"Disk vdev={disk.vdev}: cannot open {disk.target}: "
                              f"{e.strerror}") from None
        os.close(fd)
    return run


def attach(xs: Any, domid: int, disk: DiskSpec) -> Device:
    """xl block-attach / a ``disk =`` entry at creation."""
    dev = device(domid, disk)
    if devices.exists(xs, dev):
        raise DeviceError(f"Device {disk.vdev} ({dev.devid}) already exists for domain "
                          f"{domid}")
    back, front = nodes(domid, disk)
    devices.attach(xs, dev, back, front, builtin_hotplug=_builtin_hotplug(disk))
    return dev


def find(xs: Any, domid: int, ident: str) -> Device | None:
    """libxl_vdev_to_device_disk: a device named by its vdev or its number."""
    from pyxen.toolstack.xldisk import vdev_to_devid

    devid = vdev_to_devid(ident)
    for dev in devices.list_devices(xs, domid, KIND):
        if dev.devid == devid:
            return dev
    return None


def vdev_name(xs: Any, dev: Device) -> str:
    v = devices._read(xs, f"{dev.backend_path}/dev")
    return v or devid_to_vdev(dev.devid) or str(dev.devid)
