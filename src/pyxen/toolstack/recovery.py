"""A new hostd re-adopts the VMMs an earlier one left running (killed, crashed, upgraded).

Domains live in their VMM processes, not in hostd, as on Xen they live in the hypervisor
and not in xl/libxl. Everything hostd needs to carry on is outside it: the domain
directory ($RUNDIR/domains/N: config.json, the VMM's control.sock, console.sock), the
VMM itself (its state through control.sock's ``info``; its pid as the socket's peer), and
xenstored, its own process (toolstack/xenstored.py), which keeps the domain's nodes,
device records, watches and ring. So adopting is: connect to control.sock, read the
configuration back, ask the VMM its state, put the domain back in its cgroup and pool,
and apply the on_* action of a shutdown that happened while no hostd was listening.
A directory with no live VMM behind it is a leftover and is removed.

Nothing is orphaned: a domain whose creation a hostd death interrupted (its directory
still holds the ``creating`` marker that toolstack/builder.py removes last) is removed
completely (its VMM destroyed, its xenstore entries and directory removed), as the
failed ``xl create`` said; so is any VMM of this rundir (found by its command line,
``pyxen.vmm --domid N --config $RUNDIR/domains/N/config.json``) no directory led to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from . import devices, xsdomain
from .config import ConfigError, DomainConfig
from .domain import Domain, VmmControl, _rmtree
from .procs import alive as _alive

ADOPT_TIMEOUT_S = 10.0


async def wait_gone(pid: int, timeout: float) -> None:
    """A VMM that is not our child: poll until it has exited, SIGKILL its group after."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _alive(pid) and loop.time() < deadline:
        await asyncio.sleep(0.02)


def _peer_pid(sock: socket.socket | None) -> int | None:
    if sock is None:
        return None
    with contextlib.suppress(OSError):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        return pid if pid > 0 else None
    return None


CREATING = "creating"  # in a domain directory until its creation has finished


def vmm_processes(root: Path) -> dict[int, list[int]]:
    """domid -> pids of the VMMs of rundir `root`, by their command lines (a forked VMM
    rewrites its own to match: vmm/template.py set_cmdline)."""
    prefix = str(root / "domains") + "/"
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "pyxen.vmm" not in args or "--config" not in args or not _alive(int(entry)):
            continue
        i = args.index("--config")
        cfg = args[i + 1] if i + 1 < len(args) else ""
        rest = cfg[len(prefix):].split("/")
        if cfg.startswith(prefix) and len(rest) == 2 and rest[0].isdigit():
            found.setdefault(int(rest[0]), []).append(int(entry))
    return found


async def kill_vmms(pids: list[int]) -> None:
    """SIGKILL VMMs (each its session's leader: with what it started) and wait."""
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.getsid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    for pid in pids:
        await wait_gone(pid, ADOPT_TIMEOUT_S)


def forget_xenstore(hostd: Any, domid: int, uuid: str | None) -> None:
    """What xenstored holds of a domain no VMM runs any more: devices, nodes, the
    introduction (as _teardown does for a destroyed domain)."""
    xs = hostd.xs
    if xs is None:
        return
    if uuid is None:
        with contextlib.suppress(Exception):
            uuid = xs.read(f"{xsdomain.dom_path(domid)}/vm").decode().rsplit("/", 1)[-1]
    with contextlib.suppress(Exception):
        devices.destroy_all(xs, domid)
    with contextlib.suppress(Exception):
        xsdomain.remove_domain(xs, domid, uuid or "-")
    with contextlib.suppress(Exception):
        if hostd.xs_server.is_domain_introduced(domid):
            hostd.xs_server.release_domain(domid)


async def discard(hostd: Any, domid: int, ddir: Path | None, uuid: str | None) -> None:
    """Remove every trace of a domain hostd does not adopt: VMM, xenstore, directory."""
    await kill_vmms(vmm_processes(hostd.root).get(domid, []))
    forget_xenstore(hostd, domid, uuid)
    if ddir is not None:
        _rmtree(ddir)


async def adopt_all(hostd: Any) -> None:
    domains = hostd.root / "domains"
    for d in sorted(domains.iterdir(), key=lambda p: p.name):
        try:
            adopted = await adopt(hostd, d)
        except Exception as e:  # noqa: BLE001 - one bad directory must not stop hostd
            hostd.xen_log(f"cannot adopt {d}: {e!r}")
            adopted = False
        if not adopted and d.name.isdigit() and int(d.name) not in hostd.domains:
            uuid = None
            with contextlib.suppress(Exception):
                uuid = json.loads((d / "config.json").read_text())["uuid"]
            await discard(hostd, int(d.name), d, uuid if isinstance(uuid, str) else None)
        elif not adopted:
            _rmtree(d)
    for domid, pids in vmm_processes(hostd.root).items():  # VMMs no directory led to
        if domid not in hostd.domains:
            hostd.xen_log(f"Domain {domid}: VMM(s) {pids} with no domain directory: "
                          "destroying")
            await discard(hostd, domid, None, None)


async def adopt(hostd: Any, ddir: Path) -> bool:
    """One domain directory: True once its VMM is hostd's again."""
    if not ddir.name.isdigit():
        return False
    domid = int(ddir.name)
    try:
        reader, writer = await asyncio.open_unix_connection(str(ddir / "control.sock"),
                                                            limit=1 << 24)
    except OSError:
        return False  # no VMM behind it: a leftover
    pid = _peer_pid(writer.get_extra_info("socket"))
    try:
        cfg = DomainConfig.from_json(json.loads((ddir / "config.json").read_text()))
        why = ("its creation was interrupted (the `xl create` failed)"
               if (ddir / CREATING).exists() else "")
    except (OSError, ValueError, ConfigError) as e:
        why = f"unreadable config.json ({e})"
    if why:
        # a VMM we cannot describe, or half built, is still never orphaned: destroyed
        hostd.xen_log(f"Domain {domid}: {why}: destroying its VMM")
        with contextlib.suppress(Exception):
            writer.write(b'{"id": 1, "op": "destroy"}\n')
            await writer.drain()
            await asyncio.wait_for(reader.readline(), ADOPT_TIMEOUT_S)
        writer.close()
        if pid is not None:
            await wait_gone(pid, ADOPT_TIMEOUT_S)
        return False
    started = time.time()
    with contextlib.suppress(OSError):
        started = (ddir / "config.json").stat().st_mtime
    dom = Domain(domid=domid, config=cfg, dir=ddir, adopted_pid=pid, started=started,
                 state="paused")
    hostd.domains[domid] = dom
    hostd.next_domid = max(hostd.next_domid, domid + 1)
    dom.ctl = VmmControl(hostd, dom, reader, writer)
    info = await dom.ctl.request("info", timeout=ADOPT_TIMEOUT_S)
    dom.info = info if info.get("ok") else {}
    st = dom.info.get("state")
    if st in ("running", "blocked", "paused"):
        dom.state = st
    _restore_xenstore(hostd, dom)
    from .schedops import domain_built
    try:
        await domain_built(hostd, dom)  # cgroup membership, pool, vCPU pinning
    except Exception as e:  # noqa: BLE001 - it keeps running, unscheduled
        hostd.xen_log(f"Domain {domid} ({cfg.name}): scheduling not restored: {e}")
    hostd.xen_log(f"Domain {domid} ({cfg.name}) adopted: VMM pid {pid}, state {st}")
    if st in ("shutdown", "crashed"):  # its on_* action was never applied
        reason = dom.info.get("shutdown_reason") or "crash"
        asyncio.create_task(hostd.domain_shutdown(dom, reason, dom.info.get("shutdown_code")))
    return True


def _restore_xenstore(hostd: Any, dom: Any) -> None:
    """What hostd keeps of a domain that xenstored holds: the ring (re-introduced only if
    xenstored itself was restarted) and mem-set's target."""
    xs = hostd.xs
    if xs is None:
        return
    base = xsdomain.dom_path(dom.domid)
    with contextlib.suppress(Exception):
        dom.store = {"store_port": int(xs.read(f"{base}/store/port")),
                     "store_mfn": int(xs.read(f"{base}/store/ring-ref"))}
    with contextlib.suppress(Exception):
        dom.mem_target_kib = int(xs.read(f"{base}/memory/target"))
    with contextlib.suppress(Exception):
        if not hostd.xs_server.is_domain_introduced(dom.domid):
            hostd._introduce(dom)
    if not os.path.exists(dom.dir / "console.sock"):
        hostd.xen_log(f"Domain {dom.domid}: no console socket")
