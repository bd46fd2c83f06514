"""xl save / xl restore on hostd's side (libxl_domain_suspend, libxl_domain_resume,
libxl_domain_create_restore; xl's save_domain / create_domain with a restore file).

Save: a guest with PV control is asked to suspend (control/shutdown = "suspend", as
libxl's domain_suspend_common_pvcontrol_suspend) and the save goes on once the domain
has shut down with reason suspend; a guest without it is paused and saved as it is.
Then the image file (opened here, as xl opens it) is handed to the VMM over control.sock
(SCM_RIGHTS), which writes the whole image (vmm/domain_save.py). Afterwards, as xl:
destroyed, or with -c / -p resumed as a cancelled suspend (SCHEDOP_shutdown returns 1),
-p leaving it paused. A failure resumes the domain in place and removes the partial file.

Restore: the xl header is read here (its libxl domain_config names the domain), then a
VMM is spawned with the file descriptor (`--restore-fd`) and reads the rest; a bad image
is one error line naming the record, and nothing is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import xsdomain
from .config import ConfigError, DomainConfig
from .domain import Domain, OpError, pvcontrol_ack_timeout

if TYPE_CHECKING:
    from .hostd import Hostd

SUSPEND_TIMEOUT_S = 60.0  # libxl's wait for the guest to suspend after acknowledging
SAVE_TIMEOUT_S = 3600.0

OPS = ("save", "restore")


def suspend_timeout() -> float:
    try:
        return float(os.environ.get("PYXEN_SUSPEND_TIMEOUT", SUSPEND_TIMEOUT_S))
    except ValueError:
        return SUSPEND_TIMEOUT_S


def libxl_config(cfg: DomainConfig) -> dict[str, Any]:
    from .libxl_json import to_libxl_json
    return to_libxl_json(cfg)


def config_from_libxl(data: dict[str, Any]) -> DomainConfig:
    from .libxl_json import from_libxl_json
    return from_libxl_json(data)


async def saverestore_op(hostd: Hostd, op: str, req: dict[str, Any]) -> dict[str, Any]:
    if op == "save":
        return await save(hostd, hostd.find(req.get("domain")), req)
    return await restore(hostd, req)


# --- save ------------------------------------------------------------------------------------

async def save(hostd: Hostd, dom: Domain, req: dict[str, Any]) -> dict[str, Any]:
    path = req.get("file")
    if not isinstance(path, str) or not path:
        raise OpError("save: missing file")
    checkpoint, leave_paused = bool(req.get("checkpoint")), bool(req.get("paused"))
    if dom.state in ("shutdown", "crashed", "dying", "building"):
        raise OpError(f"domain {dom.domid} ({dom.config.name}) is {dom.state}: "
                      "cannot save it")
    try:
        cfg = DomainConfig.from_json(req["config"]) if req.get("config") else dom.config
    except (ConfigError, TypeError, ValueError) as e:
        raise OpError(f"save: bad configuration: {e}") from None
    image_config = libxl_config(cfg)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise OpError(f"Failed to open temp file {path} for writing: {e.strerror}") from None
    regular = stat.S_ISREG(os.fstat(fd).st_mode)
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    suspended = paused = False
    try:
        suspended = await _suspend(hostd, dom)
        t_suspended = time.monotonic()
        await hostd._vmm(dom, "pause")
        paused = True
        stats = await loop.run_in_executor(None, _save_via_vmm, dom.dir / "control.sock",
                                           fd, image_config)
    except (OpError, OSError) as e:
        os.close(fd)
        if regular:
            with contextlib.suppress(OSError):
                os.unlink(path)
        await _resume(hostd, dom, unpause=paused, suspended=suspended)
        hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): save to {path} failed, "
                      f"domain resumed: {e}")
        raise OpError(f"Failed to save domain, resuming domain: {e}") from None
    os.close(fd)
    t_saved = time.monotonic()
    stats.update(suspend_s=round(t_suspended - t0, 6), total_s=round(t_saved - t0, 6),
                 suspended=suspended, domid=dom.domid)
    hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}) saved to {path}: "
                  f"{stats['pages']} pages, {stats['bytes']} bytes in {stats['total_s']} s")
    if leave_paused or checkpoint:
        await _resume(hostd, dom, unpause=not leave_paused, suspended=suspended)
        if leave_paused:
            dom.state = "paused"
    else:
        dom.destroy_requested = True
        await hostd.destroy(dom, "suspend" if suspended else "destroyed")
    return stats


async def _suspend(hostd: Hostd, dom: Domain) -> bool:
    """libxl__domain_suspend for a PVH domain: True if the guest suspended itself."""
    info = await hostd._vmm(dom, "info")
    if not info.get("pv_control") or hostd.xs is None:
        return False  # paused and saved as it is
    if info.get("state") == "paused":
        # It could not answer: libxl would wait out its timeout. Saving it without its
        # cooperation would leave its PV drivers talking to the old domain after restore.
        raise OpError(f"domain {dom.domid} ({dom.config.name}) is paused and has PV "
                      "drivers: it cannot suspend itself (xl unpause it first)")
    path = f"{xsdomain.dom_path(dom.domid)}/control/shutdown"
    hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): suspend requested "
                  "(control/shutdown)")
    try:
        hostd.xs.write(path, "suspend")
    except Exception as e:  # noqa: BLE001
        raise OpError(f"cannot write {path}: {e}") from e
    timeout = pvcontrol_ack_timeout()
    if not await hostd._pvcontrol_acked(dom, path, timeout):
        with contextlib.suppress(Exception):  # libxl cancels the request
            hostd.xs.rm(path)
        raise OpError(f"guest didn't acknowledge suspend, cancelling request "
                      f"(within {timeout:g} s)")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + suspend_timeout()
    while not (dom.handled_shutdown and dom.shutdown_reason == "suspend"):
        if dom.destroying or dom.domid not in hostd.domains:
            raise OpError("the domain went away while suspending")
        if dom.handled_shutdown:
            raise OpError(f"the domain shut down ({dom.shutdown_reason}) instead of "
                          "suspending")
        if loop.time() > deadline:
            raise OpError("guest did not suspend (no SCHEDOP_shutdown(SHUTDOWN_suspend) "
                          f"within {suspend_timeout():g} s)")
        await asyncio.sleep(0.005)
    return True


async def _resume(hostd: Hostd, dom: Domain, *, unpause: bool, suspended: bool) -> None:
    """libxl_domain_resume(suspend_cancel=1): the guest's suspend returns 1."""
    with contextlib.suppress(OpError):
        await hostd._vmm(dom, "resume", cancelled=True)
    if suspended:
        dom.handled_shutdown = False
        dom.shutdown_reason = dom.shutdown_code = None
    dom.state = "running"
    if unpause:
        with contextlib.suppress(OpError):
            await hostd._vmm(dom, "unpause")


def _save_via_vmm(control: Path, fd: int, config: dict[str, Any]) -> dict[str, Any]:
    """Blocking (an executor thread): hand fd to the VMM and have it write the image."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(control))
        s.settimeout(SAVE_TIMEOUT_S)
        lines = s.makefile("rb")

        def request(rid: int, op: str, **args: Any) -> dict[str, Any]:
            s.sendall(json.dumps({"id": rid, "op": op, **args}).encode() + b"\n")
            while True:
                line = lines.readline()
                if not line:
                    raise OpError("the VMM closed its control connection during the save")
                msg = json.loads(line)
                if isinstance(msg, dict) and msg.get("id") == rid:
                    if not msg.get("ok"):
                        raise OpError(str(msg.get("error") or f"{op} failed"))
                    return msg

        request(1, "take_fd")
        socket.send_fds(s, [b"F"], [fd])
        reply = request(2, "save", config=config, xl_header=True)
    return {k: reply[k] for k in ("pages", "bytes", "seconds") if k in reply}


# --- restore ---------------------------------------------------------------------------------

async def restore(hostd: Hostd, req: dict[str, Any]) -> dict[str, Any]:
    from .migration import StreamError
    from .migration.savefile import read as read_xl_header
    from .migration.wire import Input

    path = req.get("file")
    if not isinstance(path, str) or not path:
        raise OpError("restore: missing file")
    t0 = time.monotonic()
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - its fd goes to the VMM
    except OSError as e:
        raise OpError(f"cannot open restore file {path}: {e.strerror}") from None
    with f:
        try:
            hdr = read_xl_header(Input(f))
        except StreamError as e:
            raise OpError(f"{path}: {e}") from None
        try:
            if req.get("config"):
                cfg = DomainConfig.from_json(req["config"])
            elif hdr.config:
                cfg = config_from_libxl(hdr.config)
            else:
                raise OpError(f"{path}: the image carries no domain configuration: "
                              "give one (xl restore CONFIG FILE)")
        except (ConfigError, KeyError, TypeError, ValueError) as e:
            raise OpError(f"{path}: bad domain configuration in the image: {e}") from None
        try:
            dom = await hostd.create(cfg, paused=bool(req.get("paused")),
                                     restore_fd=f.fileno())
        except OpError as e:  # the VMM's "cannot restore: <record>: ..." names the file too
            msg = str(e)
            raise OpError(f"{path}: {msg}" if msg.startswith("cannot restore") else msg) \
                from None
    elapsed = round(time.monotonic() - t0, 6)
    hostd.xen_log(f"Domain {dom.domid} ({cfg.name}) restored from {path} in {elapsed} s")
    return {"domid": dom.domid, "name": cfg.name, "seconds": elapsed,
            "console": str(dom.dir / "console.sock")}
