"""`xl mem-set` / `xl mem-max`: Xen's balloon protocol as libxl drives it
(libxl_set_memory_target, libxl_domain_setmaxmem). The target goes to the guest's
balloon driver through xenstore (memory/target, KiB); the maximum reservation is the
VMM's (XEN_DOMCTL_max_mem, op set_max_mem), which XENMEM_populate_physmap and
increase_reservation never pass."""

from __future__ import annotations

import re
from typing import Any

# libxl's LIBXL_MAXMEM_CONSTANT is not added: pyxen's maximum reservation is the RAM the
# guest may hold, the same number as memory/static-max (see docs/resources.md).


class MemError(Exception):
    """One line for xl."""


def parse_mem_size_kb(text: str) -> int:
    """xl's parse_mem_size_kb: a number with an optional t/g/m/k/b suffix (no suffix:
    MiB); -1 for anything else."""
    m = re.fullmatch(r"\s*([+-]?\d+)([tTgGmMkKbB]?)", text)
    if not m:
        return -1
    n, suffix = int(m.group(1)), m.group(2).lower()
    shift = {"t": 30, "g": 20, "": 10, "m": 10, "k": 0}.get(suffix)
    return n >> 10 if suffix == "b" else n << shift  # type: ignore[operator]


def _xs_kib(hostd, domid: int, leaf: str, default: int) -> int:
    from .xsdomain import dom_path
    if hostd.xs is None:
        return default
    try:
        return int(hostd.xs.read(f"{dom_path(domid)}/memory/{leaf}").decode())
    except Exception:  # noqa: BLE001 - absent or garbage: libxl falls back too
        return default


def _xs_write(hostd, domid: int, leaf: str, kib: int) -> None:
    from .xsdomain import dom_path
    if hostd.xs is not None:
        hostd.xs.write(f"{dom_path(domid)}/memory/{leaf}", str(kib))


def target_kib(hostd, dom) -> int:
    """The domain's current target (what it is asked to hold), KiB."""
    return getattr(dom, "mem_target_kib", dom.config.memory * 1024)


async def mem_op(hostd, dom, op: str, req: dict[str, Any]) -> dict[str, Any]:
    text = str(req.get("size", ""))
    kib = parse_mem_size_kb(text)
    if kib < 0:
        raise MemError(f"invalid memory size: {text}")
    if dom.state in ("shutdown", "crashed", "dying"):
        raise MemError(f"domain {dom.domid} ({dom.config.name}) has shut down")
    if op == "mem_set":
        await set_target(hostd, dom, kib, text)
    else:
        await set_max(hostd, dom, kib, text)
    return {"target_kib": target_kib(hostd, dom),
            "static_max_kib": getattr(dom, "mem_static_max_kib", dom.config.maxmem * 1024)}


async def set_target(hostd, dom, kib: int, text: str) -> None:
    """libxl_set_memory_target(enforce=1): refuse a target above static-max, lower the
    maximum reservation to the target (the guest cannot take back more than asked),
    then write memory/target for the balloon driver."""
    fail = f"cannot set domid {dom.domid} dynamic max memory to : {text}"
    static_max = _xs_kib(hostd, dom.domid, "static-max", dom.config.maxmem * 1024)
    if kib > static_max:
        raise MemError(f"{fail} (memory_dynamic_max must be less than or equal to "
                       f"memory_static_max: {kib} > {static_max} KiB)")
    if kib <= 0:
        raise MemError(f"{fail} (new target {kib} for dom{dom.domid} is below the minimum "
                       "threshold)")
    await hostd._vmm(dom, "set_max_mem", max_kib=kib)
    _xs_write(hostd, dom.domid, "target", kib)
    dom.mem_target_kib = kib
    hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): memory target {kib} KiB")


async def set_max(hostd, dom, kib: int, text: str) -> None:
    """libxl_domain_setmaxmem: refuse a maximum below the current target; otherwise
    the maximum reservation and memory/static-max. A maximum below what the guest holds
    now is Xen's "ratchet": it keeps its pages and gets no more until it is under."""
    fail = f"cannot set domid {dom.domid} static max memory to : {text}"
    target = _xs_kib(hostd, dom.domid, "target", target_kib(hostd, dom))
    if kib < target:
        raise MemError(f"{fail} (memory_static_max must be greater than or equal to "
                       f"memory_dynamic_max: {kib} < {target} KiB)")
    window = dom.config.maxmem * 1024
    if kib > window:
        raise MemError(f"{fail} (pyxen cannot grow a domain's RAM beyond the maxmem it "
                       f"was built with: {dom.config.maxmem} MiB)")
    await hostd._vmm(dom, "set_max_mem", max_kib=kib)
    _xs_write(hostd, dom.domid, "static-max", kib)
    dom.mem_static_max_kib = kib
    hostd.xen_log(f"Domain {dom.domid} ({dom.config.name}): maximum memory {kib} KiB")
