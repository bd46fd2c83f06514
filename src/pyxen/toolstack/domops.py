"""hostd's side of xl's everyday domain commands (tools/xl/xl_misc.c, xl_vmcontrol.c,
xl_list.c and the libxl calls behind them): domid, domname, rename, uptime, vm-list,
sysrq, trigger, dump-core, and the figures ``xl top`` shows (xentop's). Errors are the
lines xl/libxl print."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

from .config import DomainConfig
from .domain import Domain, OpError
from .xsdomain import dom_path

if TYPE_CHECKING:
    from .hostd import Hostd

OPS = ("domid", "domname", "rename", "uptime", "vm_list", "sysrq", "trigger", "dump_core",
       "top")
TRIGGERS = ("power", "sleep", "nmi", "init", "reset", "s3resume")  # libxl_trigger


async def dom_op(hostd: Hostd, op: str, req: dict[str, Any]) -> dict[str, Any]:
    if op == "domid":
        return {"domid": domid_of(hostd, str(req.get("name", "")))}
    if op == "domname":
        return {"name": name_of(hostd, req.get("domid"))}
    if op == "uptime":
        return {"domains": uptimes(hostd, req.get("domains") or [])}
    if op == "vm_list":
        return {"vms": [{"uuid": d.config.uuid, "domid": d.domid, "name": d.config.name}
                        for d in sorted(hostd.domains.values(), key=lambda d: d.domid)]}
    if op == "top":
        return await top(hostd)
    dom = hostd.find(req.get("domain"))
    if op == "rename":
        rename(hostd, dom, str(req.get("name", "")))
        return {}
    if op == "sysrq":
        sysrq(hostd, dom, req.get("key"))
        return {}
    if op == "trigger":
        await trigger(hostd, dom, req.get("trigger"), req.get("vcpu", 0))
        return {}
    if op == "dump_core":
        return await dump_core(hostd, dom, req.get("path"))
    raise OpError(f"unknown request {op!r}")


# ------------------------------------------------------------------ names

def domid_of(hostd: Hostd, name: str) -> int:
    """libxl_name_to_domid."""
    if name == "Domain-0":
        return 0
    for d in hostd.domains.values():
        if d.config.name == name:
            return d.domid
    raise OpError(f"Can't get domid of domain name '{name}', maybe this domain does not "
                  "exist.")


def name_of(hostd: Hostd, domid: Any) -> str:
    """libxl_domid_to_name."""
    if isinstance(domid, int) and not isinstance(domid, bool):
        if domid == 0:
            return "Domain-0"
        if domid in hostd.domains:
            return hostd.domains[domid].config.name
    raise OpError(f"Can't get domain name of domain id '{domid}', maybe this domain does "
                  "not exist.")


def rename(hostd: Hostd, dom: Domain, name: str) -> None:
    """libxl_domain_rename: the name in /local/domain/N/name and /vm/UUID/name, in one
    transaction; a name another domain has is refused. config.json follows, so that a
    restarted hostd (toolstack/recovery.py) adopts the domain under its new name."""
    if not name:
        raise OpError("Can't rename domain: the new name is empty.")
    if name == "Domain-0" or any(d.config.name == name and d is not dom
                                 for d in hostd.domains.values()):
        raise OpError(f'Domain with name "{name}" already exists.')
    if name == dom.config.name:
        return
    if hostd.xs is not None:
        dp, vp = dom_path(dom.domid), f"/vm/{dom.config.uuid}"

        def body(tx: int) -> None:
            hostd.xs.write(f"{dp}/name", name, tx=tx)
            hostd.xs.write(f"{vp}/name", name, tx=tx)

        try:
            hostd.xs.run_transaction(body)
        except Exception as e:  # noqa: BLE001 - xenstored's error, one line
            raise OpError(f"Can't rename domain '{dom.config.name}': {e}") from None
    old = dom.config.name
    dom.config = DomainConfig(**{**dom.config.to_json(), "name": name})
    cfg = dom.dir / "config.json"
    with contextlib.suppress(OSError):
        st = cfg.stat()  # its mtime is the domain's start time for a restarted hostd
        tmp = cfg.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dom.config.to_json(), indent=2) + "\n")
        os.utime(tmp, (st.st_atime, st.st_mtime))
        tmp.replace(cfg)
    hostd.xen_log(f"Domain {dom.domid} renamed from {old} to {name}")


# ------------------------------------------------------------------ uptime

def start_time(hostd: Hostd, dom: Domain) -> float:
    """libxl_vm_get_start_time: /vm/UUID/start_time."""
    if hostd.xs is not None:
        with contextlib.suppress(Exception):
            text = hostd.xs.read(f"/vm/{dom.config.uuid}/start_time")
            if text:
                return float(text)
    return dom.started


def uptimes(hostd: Hostd, wanted: list[Any]) -> list[dict[str, Any]]:
    """Domain-0 (the host: /proc/uptime) then the domains, as xl's print_uptime; with
    names, those domains in that order (unknown ones: xl's find_domain error)."""
    with open("/proc/uptime") as f:
        host_up = float(f.read().split()[0])
    dom0 = {"domid": 0, "name": "Domain-0", "uptime": host_up}
    if not wanted:
        rows = [dom0]
        for d in sorted(hostd.domains.values(), key=lambda d: d.domid):
            rows.append({"domid": d.domid, "name": d.config.name,
                         "uptime": max(0.0, time.time() - start_time(hostd, d))})
        return rows
    out = []
    for ident in wanted:
        if str(ident) in ("0", "Domain-0"):
            out.append(dom0)
            continue
        d = hostd.find(ident)
        out.append({"domid": d.domid, "name": d.config.name,
                    "uptime": max(0.0, time.time() - start_time(hostd, d))})
    return out


# ------------------------------------------------------------------ sysrq, triggers

def sysrq(hostd: Hostd, dom: Domain, key: Any) -> None:
    """libxl_send_sysrq: control/sysrq = the key, for the guest's PV drivers (Linux's
    drivers/xen/manage.c reads it, clears it and runs that sysrq handler)."""
    if not isinstance(key, str) or len(key) != 1:
        raise OpError("Invalid sysrq.")
    if hostd.xs is None:
        raise OpError("xenstore is not available: cannot send a sysrq")
    hostd.xs.write(f"{dom_path(dom.domid)}/control/sysrq", key)


async def trigger(hostd: Hostd, dom: Domain, kind: Any, vcpu: Any) -> None:
    """libxl_send_trigger for a PVH domain: power/sleep/nmi/init/reset go to the
    hypervisor (XEN_DOMCTL_sendtrigger: vmm/domctl.py), s3resume is
    HVM_PARAM_ACPI_S_STATE = 0, which resumes only a domain in S3 (a PVH domain never
    is). A failure is libxl's line."""
    if kind not in TRIGGERS:
        raise OpError(f'Invalid trigger "{kind}"')
    if not isinstance(vcpu, int) or isinstance(vcpu, bool):
        raise OpError(f"Invalid vcpuid {vcpu!r}")
    if dom.state in ("shutdown", "crashed", "dying") or dom.ctl is None:
        raise OpError(f"libxl: error: libxl_send_trigger: Domain {dom.domid}:Send trigger "
                      f"'{kind}' failed: domain has shut down")
    if kind == "s3resume":
        return
    reply = await dom.ctl.request("trigger", kind=kind, vcpu=vcpu)
    if not reply.get("ok"):
        raise OpError(f"libxl: error: libxl_send_trigger: Domain {dom.domid}:Send trigger "
                      f"'{kind}' failed: {reply.get('error')}")


# ------------------------------------------------------------------ dump-core

async def dump_core(hostd: Hostd, dom: Domain, path: Any) -> dict[str, Any]:
    """libxl_domain_core_dump: the VMM writes the ELF core file (vmm/domctl.py)."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise OpError("dump-core needs an absolute file name")
    if dom.ctl is None:
        raise OpError(f"core dump failed: domain {dom.domid} has no running VMM")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise OpError(f"core dump failed: cannot open {path}: No such file or directory")
    reply = await dom.ctl.request("dump_core", timeout=300.0, path=path)
    if not reply.get("ok"):
        err = str(reply.get("error", "failed")).split(": ", 1)[-1]
        raise OpError(f"core dump failed: {path}: {err}")
    hostd.xen_log(f"Domain {dom.domid} core dumped to {path} ({reply.get('pages')} pages)")
    return {"pages": reply.get("pages"), "bytes": reply.get("bytes")}


# ------------------------------------------------------------------ xl top

async def top(hostd: Hostd) -> dict[str, Any]:
    """What xentop shows per domain (xenstat): state, CPU time (the vCPU threads'),
    memory now / maximum, vCPUs, and per device the backends' counters; and the host's
    totals (memory, CPUs) for the percentages and the summary lines."""
    rows = await hostd.list_domains(None)
    at = time.monotonic()  # when the CPU times were read (xl top's interval)
    stats = await asyncio.gather(*(_dev_stats(hostd.domains[r["domid"]])
                                   for r in rows if r["domid"] in hostd.domains))
    by_id = dict(zip([r["domid"] for r in rows if r["domid"] in hostd.domains], stats,
                     strict=True))
    mi = hostd.meminfo()
    out = []
    for r in rows:
        dom = hostd.domains.get(r["domid"])
        info = dom.info if dom is not None else {}
        mem_kib = int(info.get("memory_kib", r["memory"] * 1024))
        max_kib = int(info.get("max_memory_kib", mem_kib)) if dom is not None else \
            mi.get("MemTotal", 0)
        dev = by_id.get(r["domid"], {"vbds": [], "vifs": []})
        out.append({"domid": r["domid"], "name": r["name"], "state": r["state"],
                    "cpu_time": r["cpu_time"], "mem_kib": mem_kib, "maxmem_kib": max_kib,
                    "vcpus": r["vcpus"], "vifs": dev["vifs"], "vbds": dev["vbds"],
                    "ssid": 0})
    return {"domains": out, "at": at, "total_kib": mi.get("MemTotal", 0),
            "free_kib": hostd.free_memory_mib() * 1024, "ncpus": os.cpu_count() or 1}


async def _dev_stats(dom: Domain) -> dict[str, Any]:
    if dom.ctl is None or dom.destroying:
        return {"vbds": [], "vifs": []}
    try:
        reply = await dom.ctl.request("dev_stats", timeout=3.0)
    except (TimeoutError, OpError, ConnectionError):
        return {"vbds": [], "vifs": []}
    if not reply.get("ok"):
        return {"vbds": [], "vifs": []}
    return {"vbds": reply.get("vbds", []), "vifs": reply.get("vifs", [])}
