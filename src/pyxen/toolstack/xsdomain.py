"""A domain's xenstore entries in libxl's layout (libxl__domain_make, libxl__build_post).

/local/domain/N is owned by dom0 and readable by N; the nodes the guest writes
(control/shutdown, control/feature-*, data, drivers, feature, attr, error) are owned by
N, as libxl makes them. /vm/UUID holds name, uuid and start_time; /libxl/N is dom0's.
hostd is the only writer of these paths, and talks to xenstored through the client of
the contract (pyxen.xenstore.client.XenstoreClient), as libxl uses libxenstore.
"""

from __future__ import annotations

import time
from typing import Any

from pyxen.toolstack.config import DomainConfig

GUEST_WRITABLE = ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                  "control/feature-suspend", "control/sysrq", "data", "drivers", "feature",
                  "attr", "error")


def dom_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def write_domain(client: Any, domid: int, cfg: DomainConfig, *, store_port: int | None = None,
                 store_mfn: int | None = None, console_port: int | None = None,
                 console_mfn: int | None = None) -> None:
    """Create every entry libxl creates for a new PVH domain, in one transaction. Its
    writes go out together (_Batch): a few round trips to xenstored, not ~40, on every
    create's path."""
    def fill(tx: int) -> None:
        batch = _Batch(client, tx)
        _write_domain(batch, domid, cfg, store_port, store_mfn, console_port, console_mfn)
        batch.flush()
    client.run_transaction(fill)


class _Tx:
    """The client's calls bound to one transaction."""

    def __init__(self, client: Any, tx: int) -> None:
        self.c, self.tx = client, tx

    def write(self, path: str, value: str) -> None:
        self.c.write(path, value, self.tx)

    def set_perms(self, path: str, perms: list[str]) -> None:
        self.c.set_perms(path, perms, self.tx)

    def rm(self, path: str) -> None:
        self.c.rm(path, self.tx)

    def exists(self, path: str) -> bool:
        return bool(self.c.exists(path, self.tx))


class _Batch(_Tx):
    """_Tx whose writes, permissions and removals are sent together at the next read
    (exists) or flush(), with XenstoreClient.call_many when the client has it."""

    def __init__(self, client: Any, tx: int) -> None:
        super().__init__(client, tx)
        self.queued: list[tuple[str, tuple[Any, ...]]] = []

    def write(self, path: str, value: str) -> None:
        self.queued.append(("write", (path, value)))

    def set_perms(self, path: str, perms: list[str]) -> None:
        self.queued.append(("set_perms", (path, perms)))

    def rm(self, path: str) -> None:
        self.queued.append(("rm", (path,)))

    def exists(self, path: str) -> bool:
        self.flush()
        return super().exists(path)

    def flush(self) -> None:
        queued, self.queued = self.queued, []
        if not queued:
            return
        if not hasattr(self.c, "call_many"):  # another client: one call each
            for name, args in queued:
                getattr(super(), name)(*args)
            return
        from pyxen.xenstore.wire import Op
        reqs = []
        for name, args in queued:
            path = args[0].encode() + b"\0"
            if name == "write":
                reqs.append((Op.WRITE, path + args[1].encode()))
            elif name == "set_perms":
                reqs.append((Op.SET_PERMS, path + b"".join(p.encode() + b"\0"
                                                           for p in args[1])))
            else:
                reqs.append((Op.RM, path))
        self.c.call_many(reqs, self.tx)


def _write_domain(client: _Tx, domid: int, cfg: DomainConfig, store_port: int | None,
                  store_mfn: int | None, console_port: int | None = None,
                  console_mfn: int | None = None) -> None:
    dp, vp, lp = dom_path(domid), f"/vm/{cfg.uuid}", f"/libxl/{domid}"
    roperm = ["n0", f"r{domid}"]
    rwperm = [f"n{domid}"]
    noperm = ["n0"]

    def mknod(path: str, perms: list[str]) -> None:
        client.write(path, "")
        client.set_perms(path, perms)

    for p in (dp, vp, lp):
        if client.exists(p):
            client.rm(p)
    mknod(dp, roperm)
    mknod(vp, roperm)
    mknod(lp, noperm)
    mknod(f"{lp}/device", noperm)
    client.write(f"{lp}/type", cfg.type)

    client.write(f"{dp}/vm", vp)
    client.write(f"{dp}/name", cfg.name)
    client.write(f"{vp}/name", cfg.name)
    client.write(f"{vp}/uuid", cfg.uuid)
    client.write(f"{vp}/start_time", f"{time.time():.2f}")
    mknod(f"{dp}/device", roperm)
    mknod(f"{dp}/control", roperm)
    client.write(f"{dp}/control/platform-feature-multiprocessor-suspend", "1")
    client.write(f"{dp}/control/platform-feature-xs_reset_watches", "1")
    for sub in GUEST_WRITABLE:
        mknod(f"{dp}/{sub}", rwperm)

    # libxl__build_post
    client.write(f"{dp}/domid", str(domid))
    client.write(f"{dp}/memory/static-max", str(cfg.maxmem * 1024))
    client.write(f"{dp}/memory/target", str(cfg.memory * 1024))
    client.write(f"{dp}/memory/videoram", "-1")
    for k in range(cfg.maxvcpus):
        client.write(f"{dp}/cpu/{k}/availability", "online" if k < cfg.vcpus else "offline")
    if store_port is not None:
        client.write(f"{dp}/store/port", str(store_port))
    if store_mfn is not None:
        client.write(f"{dp}/store/ring-ref", str(store_mfn))
    client.write(f"{dp}/console/type", "xenconsoled")
    client.write(f"{dp}/console/tty", "")
    # libxl__device_console_add: the PV console ring's page and event channel
    if console_port is not None:
        client.write(f"{dp}/console/port", str(console_port))
    if console_mfn is not None:
        client.write(f"{dp}/console/ring-ref", str(console_mfn))


def rename_domain(client: Any, domid: int, old_uuid: str, new_uuid: str, name: str) -> None:
    """libxl_domain_preserve: the old domain gets a new name and a new /vm entry."""
    client.run_transaction(lambda tx: _rename(_Tx(client, tx), domid, old_uuid, new_uuid,
                                              name))


def _rename(client: _Tx, domid: int, old_uuid: str, new_uuid: str, name: str) -> None:
    dp, old_vp, vp = dom_path(domid), f"/vm/{old_uuid}", f"/vm/{new_uuid}"
    client.write(vp, "")
    client.set_perms(vp, ["n0", f"r{domid}"])
    client.write(f"{vp}/name", name)
    client.write(f"{vp}/uuid", new_uuid)
    client.write(f"{vp}/start_time", f"{time.time():.2f}")
    client.write(f"{dp}/vm", vp)
    client.write(f"{dp}/name", name)
    if client.exists(old_vp):
        client.rm(old_vp)


def remove_domain(client: Any, domid: int, uuid: str) -> None:
    for p in (dom_path(domid), f"/vm/{uuid}", f"/libxl/{domid}"):
        try:
            client.rm(p)
        except Exception:  # noqa: BLE001 - already gone
            pass
