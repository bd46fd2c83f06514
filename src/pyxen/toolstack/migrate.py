"""hostd's half of live migration (libxl_domain_suspend with LIBXL_SUSPEND_LIVE on the
source, libxl_domain_create_restore on the target, libxl_domain_rename and
libxl_domain_resume around them). xl drives the handshake (cli/xl_migrate.py); the pages
go from the source VMM straight into the stream (vmm/precopy.py).

| op | arguments | reply |
|---|---|---|
| `migrate_send` | `domain`, `stream` ({pid, fd}: toolstack/streamfd.py), `config`? (xl -C: a DomainConfig JSON), `max_iters`?, `target_dirty`? | the VMM's figures (iterations, paused_at, ...); the domain is left suspended |
| `migrate_resume` | `domain` | the source copy runs again (failed migration) |
| `migrate_probe` | `domain`, `stream`, `bytes` | `seconds`: the VMM wrote that much guest memory to the stream, nothing else (bench/migrate.py's baseline) |
| `domain_rename` | `domain`, `name` | libxl_domain_rename: xenstore's name nodes and config.json |
| `migrate_receive` | `stream` | `domid`, `name` (NAME--incoming), `common_name` (NAME), the `time.time()`s `image_end_at` (the VMM read END), `vmm_restored_at`, `hostd_at` (hostd had the VMM's event), `replied_at`; paused; its xenstore introduction may still be going on (`migrate_go` waits for it) |
| `migrate_abort` | `domain` | the target's copy is destroyed and its console log removed: a failed migration leaves nothing |
| `migrate_go` | `domain`, `name`, `unpause` | the target's copy renamed NAME and unpaused (one round trip while the guest is down); `go_at` (hostd had the request), `unpaused_at` (time.time()) |
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

from .config import DomainConfig
from .domain import Domain, OpError

if TYPE_CHECKING:
    from .hostd import Hostd

OPS = ("migrate_send", "migrate_resume", "domain_rename", "migrate_receive", "migrate_go",
       "migrate_abort", "migrate_probe")
MIGRATE_TIMEOUT_S = 3600.0  # a live migration of a big, busy guest takes a while
INCOMING = "--incoming"
MIGRATEDAWAY = "--migratedaway"


def stream_config(cfg: DomainConfig) -> dict[str, Any]:
    """The domain configuration the stream carries (xl's save-file header): libxl's
    domain_config JSON, as xl save writes it."""
    from .saverestore import libxl_config

    return libxl_config(cfg)


async def migrate_op(hostd: Hostd, op: str, req: dict[str, Any]) -> dict[str, Any]:
    if op == "migrate_receive":
        return await migrate_receive(hostd, req)
    dom = hostd.find(req.get("domain"))
    if op == "migrate_send":
        return await migrate_send(hostd, dom, req)
    if op == "migrate_go":
        name = req.get("name")
        if not isinstance(name, str) or not name:
            raise OpError("migrate_go needs a 'name'")
        # The guest is down until the unpause: the name is checked first, the unpause
        # goes first, the renaming (xenstore, config.json) after it.
        for other in hostd.domains.values():
            if other is not dom and other.config.name == name:
                raise OpError(f'Domain with name "{name}" already exists.')
        unpaused_at = None
        go_at = time.time()
        if req.get("unpause", True):
            await hostd.pause(dom, False)
            unpaused_at = time.time()
        incoming = dom.config.name
        rename(hostd, dom, name)
        _rename_console_log(hostd, incoming, name)
        return {"unpaused_at": unpaused_at or time.time(), "go_at": go_at}
    if op == "migrate_abort":
        name = dom.config.name
        dom.destroy_requested = True
        await hostd.destroy(dom, "destroyed")
        _remove_console_log(hostd, name)
        return {}
    if op == "migrate_probe":  # bench/migrate.py: the transport alone, from the VMM
        reply = await _vmm_long(dom, "migrate_probe", stream=req.get("stream"),
                                bytes=int(req.get("bytes", 512 << 20)))
        return {"seconds": reply["seconds"], "bytes": reply["bytes"]}
    if op == "migrate_resume":
        away = dom.config.name
        if away.endswith(MIGRATEDAWAY):  # the name it had (xl renames back, then resumes)
            rename(hostd, dom, away[:-len(MIGRATEDAWAY)])
        reply = await _vmm(dom, "migrate_resume")
        if reply.get("resumed"):
            _not_suspended(dom)
            hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}) resumed after a failed "
                          "migration")
        return {"resumed": bool(reply.get("resumed"))}
    if op == "domain_rename":
        name = req.get("name")
        if not isinstance(name, str) or not name:
            raise OpError("domain_rename needs a 'name'")
        rename(hostd, dom, name)
        return {"name": name}
    raise OpError(f"unknown request {op!r}")


async def _vmm(dom: Domain, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    if dom.ctl is None:
        raise OpError(f"domain {dom.domid} has no running VMM")
    reply = await dom.ctl.request(op, timeout=timeout, **args)
    if not reply.get("ok"):
        raise OpError(str(reply.get("error") or f"{op} failed"))
    return reply


async def migrate_send(hostd: Hostd, dom: Domain, req: dict[str, Any]) -> dict[str, Any]:
    if dom.state in ("shutdown", "crashed", "dying", "building"):
        raise OpError(f"domain {dom.domid} ({dom.config.name}) is {dom.state}: "
                      "it cannot be migrated")
    cfg = dom.config
    if isinstance(req.get("config"), dict):  # xl migrate -C: the config the target gets
        override = DomainConfig.from_json(req["config"])
        override.name = cfg.name
        cfg = override
    args = {k: req[k] for k in ("max_iters", "target_dirty") if isinstance(req.get(k), int)}
    info = await _vmm(dom, "info")
    # libxl__domain_suspend: a guest with PV control suspends itself for the last round.
    pv = bool(info.get("pv_control")) and hostd.xs is not None and dom.state != "paused"
    hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): live migration started")
    try:
        reply = await _vmm_long(dom, "migrate_send", stream=req.get("stream"),
                                config=stream_config(cfg), pv_suspend=pv, **args)
    except OpError as e:
        _not_suspended(dom)
        hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): migration failed, "
                      f"resumed: {e}")
        raise
    dom.state = "paused"
    return reply


async def _vmm_long(dom: Domain, op: str, **args: Any) -> dict[str, Any]:
    """A long request on its own connection to the VMM's control.sock: hostd's usual
    connection stays free for `info`, `xl list` and the suspend dialogue meanwhile."""
    import asyncio

    try:
        reader, writer = await asyncio.open_unix_connection(str(dom.dir / "control.sock"),
                                                            limit=1 << 24)
    except OSError as e:
        raise OpError(f"domain {dom.domid}: VMM not reachable: {e}") from None
    try:
        writer.write(json.dumps({"id": 1, "op": op, **args}).encode() + b"\n")
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), MIGRATE_TIMEOUT_S)
            if not line:
                raise OpError(f"domain {dom.domid}: the VMM went away during {op}")
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("id") == 1:
                break
    except (OSError, ConnectionError, ValueError, TimeoutError) as e:
        raise OpError(f"domain {dom.domid}: {op}: {e}") from None
    finally:
        writer.close()
    if not msg.get("ok"):
        raise OpError(str(msg.get("error") or f"{op} failed"))
    msg.pop("id", None)
    msg.pop("ok", None)
    return msg


def _not_suspended(dom: Domain) -> None:
    """The guest's suspend was cancelled (SCHEDOP_shutdown returned 1): running again."""
    if dom.shutdown_reason == "suspend":
        dom.handled_shutdown = False
        dom.shutdown_reason = dom.shutdown_code = None
    dom.state = "running"


def suspend_requested(hostd: Hostd, dom: Domain) -> None:
    """The VMM's migrate_suspend event (end of pre-copy): control/shutdown = "suspend" and
    the wait for the guest, as for xl save (toolstack/saverestore.py); if that fails the
    VMM is told, and resumes the domain."""
    import asyncio

    async def run() -> None:
        from .saverestore import _suspend

        try:
            if await _suspend(hostd, dom):
                return
            why = "the guest cannot be asked to suspend"
        except OpError as e:
            why = str(e)
        with contextlib.suppress(OpError):
            await _vmm(dom, "migrate_suspend_abort", message=why)

    asyncio.create_task(run())


def rename(hostd: Hostd, dom: Domain, name: str) -> None:
    """libxl_domain_rename: the new name must be free; xenstore's /local/domain/N/name and
    /vm/UUID/name change in one transaction, config.json follows (hostd restarts)."""
    for other in hostd.domains.values():
        if other is not dom and other.config.name == name:
            raise OpError(f'Domain with name "{name}" already exists.')
    old = dom.config.name
    if hostd.xs is not None:
        dp, vp = f"/local/domain/{dom.domid}", f"/vm/{dom.config.uuid}"

        def tx(t: int) -> None:
            hostd.xs.write(f"{dp}/name", name, t)
            if hostd.xs.exists(vp, t):
                hostd.xs.write(f"{vp}/name", name, t)

        hostd.xs.run_transaction(tx)
    dom.config.name = name
    cfg_path = dom.dir / "config.json"
    if cfg_path.exists():
        cfg_path.write_text(json.dumps(dom.config.to_json()))
    hostd.xen_log(f"Domain {dom.domid} renamed from {old} to {name}")


def read_stream_config(fd: int) -> DomainConfig:
    """xl's save-file header at the head of the stream, read exactly (unbuffered: the
    libxl stream that follows is the restoring VMM's to read)."""
    from .migration import savefile
    from .migration.wire import Input

    raw = os.fdopen(fd, "rb", buffering=0, closefd=False)
    hdr = savefile.read(Input(raw))
    if hdr.config is None:
        raise OpError("migration stream has no domain configuration")
    return config_from_stream(hdr.config)


def config_from_stream(data: dict[str, Any]) -> DomainConfig:
    from .config import ConfigError
    from .saverestore import config_from_libxl

    try:
        return config_from_libxl(data)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise OpError(f"migration stream: bad domain configuration: {e}") from None


async def migrate_receive(hostd: Hostd, req: dict[str, Any]) -> dict[str, Any]:
    """libxl_domain_create_restore from the stream, paused, named NAME--incoming as xl's
    create_domain names a domain it receives (migration_domname). Any failure leaves
    nothing: the VMM exits before announcing itself (vmm/restore.py) and hostd's create
    removes what it made."""
    import asyncio

    from .migration import StreamError
    from .streamfd import StreamFdError, take_fd

    try:
        fd = take_fd(req.get("stream"))
    except StreamFdError as e:
        raise OpError(str(e)) from None
    try:
        loop = asyncio.get_running_loop()
        try:
            cfg = await loop.run_in_executor(None, read_stream_config, fd)
        except StreamError as e:
            raise OpError(f"migration stream: {e}") from None
        common = cfg.name
        cfg.name = f"{common}{INCOMING}"
        try:
            dom = await hostd.create(cfg, paused=True, restore_fd=fd)
        except BaseException:
            _remove_console_log(hostd, cfg.name)
            raise
    finally:
        os.close(fd)
    hostd.xen_log(f"Domain {dom.domid} ({cfg.name}) received by migration")
    return {"domid": dom.domid, "name": dom.config.name, "common_name": common,
            **getattr(dom, "restored_times", {}), "replied_at": time.time()}


def _remove_console_log(hostd: Hostd, name: str) -> None:
    """The console log of a copy that never ran (NAME--incoming): nothing may be left."""
    from ..backends.pvdevices import console_log_path

    with contextlib.suppress(OSError):
        console_log_path(hostd.root, name).unlink()


def _rename_console_log(hostd: Hostd, old: str, new: str) -> None:
    """The received copy's console log follows its name (the VMM's open file goes along);
    an older log of that name is kept, the new one then keeps its incoming name."""
    from ..backends.pvdevices import console_log_path

    src, dst = console_log_path(hostd.root, old), console_log_path(hostd.root, new)
    if src.exists() and not dst.exists():
        with contextlib.suppress(OSError):
            src.rename(dst)
