"""hostd's block-device requests: xl block-attach, block-detach, block-list
(libxl_device_disk_add / _remove / _destroy / _list + _getinfo)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pyxen.toolstack import devices, vbd
from pyxen.toolstack.config import ConfigError, check_disk_target, check_disks
from pyxen.toolstack.xldisk import DiskSpec, DiskSpecError


class OpError(ConfigError):
    """One line answered to xl (hostd answers ConfigError's text as its error; hostd's
    own OpError is not importable here: hostd runs as __main__)."""


async def block_op(hostd: Any, dom: Any, op: str, req: dict[str, Any]) -> dict[str, Any]:
    if hostd.xs is None:
        raise OpError("xenstored is not running")
    xs = hostd.xs
    loop = asyncio.get_running_loop()
    if op == "block_list":
        devs = await loop.run_in_executor(None, devices.list_devices, xs, dom.domid, vbd.KIND)
        rows = []
        for d in devs:
            info = await loop.run_in_executor(None, devices.frontend_info, xs, d)
            info["vdev"] = await loop.run_in_executor(None, vbd.vdev_name, xs, d)
            rows.append(info)
        return {"disks": rows}
    if dom.state in ("shutdown", "crashed", "dying"):
        raise OpError(f"domain {dom.domid} ({dom.config.name}) has shut down")
    if op == "block_attach":
        try:
            disk = DiskSpec.from_json(req.get("disk"))
            check_disks([disk], dom.config.disk_specs())
            check_disk_target(disk)
        except DiskSpecError as e:
            raise OpError(str(e)) from None
        try:
            dev = await loop.run_in_executor(None, vbd.attach, xs, dom.domid, disk)
        except devices.DeviceError as e:
            raise OpError(f"libxl_device_disk_add failed: {e}") from None
        dom.config = dataclasses.replace(dom.config,
                                         disks=[*dom.config.disks, disk.to_json()])
        hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): disk {disk.vdev} "
                      f"({dev.devid}) attached: {disk.target or '(empty)'}")
        return {"devid": dev.devid}
    if op == "block_detach":
        ident = str(req.get("device", ""))
        dev = await loop.run_in_executor(None, vbd.find, xs, dom.domid, ident)
        if dev is None:
            raise OpError(f"Error: Device {ident} not connected.")
        closed = await loop.run_in_executor(None, devices.detach, xs, dev,
                                            bool(req.get("force")))
        dom.config = dataclasses.replace(dom.config, disks=[
            d for d in dom.config.disks if _devid(d) != dev.devid])
        hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): disk {dev.devid} detached"
                      + ("" if closed else " (forced: the backend did not close in time)"))
        return {"devid": dev.devid, "closed": closed}
    raise OpError(f"unknown request {op!r}")


def _devid(d: dict[str, Any]) -> int | None:
    try:
        return DiskSpec.from_json(d).devid
    except DiskSpecError:
        return None
