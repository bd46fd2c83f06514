"""hostd's network-device requests: xl network-attach, network-detach, network-list
(libxl_device_nic_add / _remove / _destroy / _list + _getinfo), and the ``vif = [...]``
devices of a new domain (libxl__add_nics)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import Any

from pyxen.toolstack import devices, vif
from pyxen.toolstack.vifspec import NicSpec, VifSpecError, assign_devids, check


async def attach_vifs(hostd: Any, dom: Any) -> None:
    """Each configured vif, before the guest runs; the MACs libxl generated are kept in
    the domain's config (libxl__update_config_nic), so a restart reuses them."""
    OpError = _op_error(hostd)  # noqa: N806

    specs = dom.config.nic_specs()
    if not specs:
        return
    if hostd.xs is None:
        raise OpError("xenstored is not running: cannot add the domain's vifs")
    loop = asyncio.get_running_loop()
    for nic in specs:
        try:
            await loop.run_in_executor(None, vif.attach, hostd.xs, dom.domid, nic)
        except devices.DeviceError as e:
            raise OpError(f"libxl__device_nic_add failed: {e}") from None
    dom.config = dataclasses.replace(dom.config, vifs=[n.to_json() for n in specs])


async def network_op(hostd: Any, dom: Any, op: str, req: dict[str, Any]) -> dict[str, Any]:
    OpError = _op_error(hostd)  # noqa: N806

    if hostd.xs is None:
        raise OpError("xenstored is not running")
    xs = hostd.xs
    loop = asyncio.get_running_loop()
    if op == "network_list":
        devs = await loop.run_in_executor(None, devices.list_devices, xs, dom.domid, vif.KIND)
        rows = [await loop.run_in_executor(None, vif.info, xs, d) for d in devs]
        return {"nics": rows}
    if dom.state in ("shutdown", "crashed", "dying"):
        raise OpError(f"domain {dom.domid} ({dom.config.name}) has shut down")
    if op == "network_attach":
        try:
            nic = NicSpec.from_json(req.get("nic"))
            check(nic)
            existing = await loop.run_in_executor(None, devices.list_devices, xs,
                                                  dom.domid, vif.KIND)
            assign_devids([nic], {d.devid for d in existing})
        except VifSpecError as e:
            raise OpError(str(e)) from None
        try:
            dev = await loop.run_in_executor(None, vif.attach, xs, dom.domid, nic)
        except devices.DeviceError as e:
            raise OpError(f"libxl_device_nic_add failed: {e}") from None
        dom.config = dataclasses.replace(dom.config, vifs=[*dom.config.vifs, nic.to_json()])
        hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): vif {dev.devid} attached "
                      f"({nic.mac}, bridge {nic.bridge})")
        return {"devid": dev.devid, "mac": nic.mac}
    if op == "network_detach":
        ident = str(req.get("device", ""))
        dev = await loop.run_in_executor(None, vif.find, xs, dom.domid, ident)
        if dev is None:
            raise OpError(f"Unknown device {ident}.")
        closed = await loop.run_in_executor(None, vif.detach, xs, dev, bool(req.get("force")))
        dom.config = dataclasses.replace(dom.config, vifs=[
            v for v in dom.config.vifs if v.get("devid") != dev.devid])
        hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): vif {dev.devid} detached"
                      + ("" if closed else " (forced: the backend did not close in time)"))
        return {"devid": dev.devid, "closed": closed}
    raise OpError(f"unknown request {op!r}")


def _op_error(hostd: Any) -> type[Exception]:
    """hostd's OpError, from the module hostd really runs as (``python -m`` makes it
    __main__, where pyxen.toolstack.hostd.OpError would be another class)."""
    return sys.modules[type(hostd).__module__].OpError  # type: ignore[no-any-return]
