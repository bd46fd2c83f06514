"""Xen's debug keys (common/keyhandler.c, `xl debug-keys`): the key table, and the
per-domain half of the handlers, which runs in the domain's VMM.

Xen runs a key's handler once, over every domain; pyxen's domains live in separate VMM
processes, so hostd (toolstack/keyhandler.py) prints the handler's header, then asks each
VMM for its domain's lines (the control op `debug_key`) and puts them in the hypervisor
log in domain order. The wording follows Xen's dump_domains ('q') and
domain_dump_evtchn_info ('e'), minus what pyxen has no equivalent for (refcnt,
xenheap pages, affinities); pyxen's own additions come after Xen's fields.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import TYPE_CHECKING, Any

from .event_channel import ECS_FREE, ECS_INTERDOMAIN, ECS_UNBOUND, ECS_VIRQ
from .public.event_channel import VIRQ_DEBUG
from .shared_info import shinfo_layout

if TYPE_CHECKING:
    from .domain import VCPU, Domain

# key -> (description, diagnostic: run by '*'), Xen's wording; only the keys pyxen has.
KEYS: dict[str, tuple[str, bool]] = {
    "*": ("print all diagnostics", False),
    "e": ("dump evtchn info", True),
    "h": ("show this message", False),
    "q": ("dump domain (and guest debug) info", True),
}

# struct vcpu's pause_flags bits (xen/sched.h _VPF_blocked, _VPF_down)
VPF_BLOCKED = 1 << 0
VPF_DOWN = 1 << 1

_PAGE = 4096


def cpulist(ids: list[int]) -> str:
    """Xen's %*pbl: "0-2,5" (empty: "")."""
    out: list[str] = []
    ids = sorted(set(ids))
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def _host_cpu(v: VCPU) -> int:
    """The host CPU the vCPU's thread last ran on (Xen's v->processor); -1 if none."""
    ident = v.thread_ident
    if ident is None:
        return -1
    for t in threading.enumerate():
        if t.ident == ident and t.native_id is not None:
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/self/task/{t.native_id}/stat") as f:
                    return int(f.read().rsplit(")", 1)[1].split()[36])
    return -1


def _vcpu_info_bytes(d: Domain, vid: int) -> tuple[int, int]:
    """(evtchn_upcall_pending, evtchn_upcall_mask) of the vCPU's vcpu_info."""
    ev = d.evtchn
    if ev is None:
        return 0, 0
    try:
        addr = ev.vcpu_info_addr(vid)
    except Exception:  # a vcpu_info the guest placed badly: nothing to show
        return 0, 0
    lay = shinfo_layout(d)
    return (ctypes.c_uint8.from_address(addr + lay.upcall_pending_off).value,
            ctypes.c_uint8.from_address(addr + lay.upcall_mask_off).value)


def dump_domain(d: Domain) -> list[str]:
    """'q': dump_domains' lines for one domain."""
    with d.cond:
        pause_count, dying = d.pause_count, d.dying
        reason, code = d.shutdown_reason, d.shutdown_code
    state = d.state()
    lines = [
        f"General information for domain {d.domid}:",
        f"    dying={int(dying)} pause_count={pause_count}",
        f"    nr_pages={d.memory.size // _PAGE} max_pages={d.max_memory // _PAGE}",
        f"    handle={d.uuid} vm_assist=00000000",
        f"    name={d.name} state={state} is_shut_down={int(reason is not None)} "
        f"shutdown_code={-1 if code is None else code}",
        f"VCPU information and callbacks for domain {d.domid}:",
    ]
    ev = d.evtchn
    for v in d.vcpus:
        pend, mask = _vcpu_info_bytes(d, v.id)
        poll = None if ev is None else ev.vstate[v.id].poll
        lines.append(f"    VCPU{v.id}: CPU{_host_cpu(v)} [has={'T' if v.running else 'F'}] "
                     f"poll={0 if poll is None else poll} upcall_pend={pend:02x} "
                     f"upcall_mask={mask:02x}")
        flags = (VPF_BLOCKED if v.blocked else 0) | (0 if v.online else VPF_DOWN)
        lines.append(f"    pause_count=0 pause_flags={flags:x}")
        period = 0 if d.timers is None else d.timers.vcpus[v.id].periodic_period
        if period:
            lines.append(f"{1_000_000_000 // period} Hz periodic timer "
                         f"(period {period // 1_000_000} ms)")
        else:
            lines.append("No periodic timer")
    if d.emulation is not None:  # pyxen's addition: instructions the host's KVM lacks
        lines += d.emulation.dump_lines()
    return lines


def notify_debug(d: Domain) -> list[str]:
    """'q', second half: VIRQ_DEBUG to each online vCPU (Xen: send_guest_vcpu_virq to every
    vCPU; an offline one has no LAPIC to take it here), one line per vCPU."""
    ev = d.evtchn
    lines = []
    for v in d.vcpus:
        if not v.online:
            continue
        port = 0 if ev is None else ev.virq_to_port.get((v.id, VIRQ_DEBUG), 0)
        lines.append(f"Notifying guest {d.domid}:{v.id} (virq {VIRQ_DEBUG}, port {port})")
        if ev is not None and not d.dying:
            ev.send_virq(v.id, VIRQ_DEBUG)
    return lines


def dump_evtchn(d: Domain) -> list[str]:
    """'e': domain_dump_evtchn_info: [pending/masked/ABI state] per port, the ABI state
    being the selector bit (2-level) or BUSY and LINK (FIFO: "B 12  ", "  -   ")."""
    ev = d.evtchn
    if ev is None:
        return [f"Event channel information for domain {d.domid}:", "Polling vCPUs: {}"]
    with ev.host.lock:
        polling = [i for i, st in enumerate(ev.vstate) if st.poll is not None]
        lines = [f"Event channel information for domain {d.domid}:",
                 f"Polling vCPUs: {{{cpulist(polling)}}}", "    port [p/m/s]"]
        for port in range(1, len(ev.ports)):
            ch = ev.ports[port]
            if ch.state == ECS_FREE:
                continue
            p, m = int(ev.is_pending(port)), int(ev.is_masked(port))
            s = ev.abi.print_state(port, ch)
            text = f"    {port:4d} [{p}/{m}/{s}]: s={ch.state} n={ch.notify_vcpu} x=0"
            if ch.state == ECS_UNBOUND:
                text += f" d={ch.remote_domid}"
            elif ch.state == ECS_INTERDOMAIN:
                text += f" d={ch.remote_domid} p={ch.remote_port}"
            elif ch.state == ECS_VIRQ:
                text += f" v={ch.virq}"
            lines.append(text)
    return lines


def debug_key(d: Domain, key: str) -> dict[str, Any]:
    """The VMM's `debug_key` control op: `lines` for the hypervisor log (without the
    "(XEN) " prefix), and for 'q' `notify`: the VIRQ_DEBUG lines, printed by hostd after
    every domain's dump, as Xen does. Keys without a per-domain part give nothing."""
    if key == "q":
        return {"lines": dump_domain(d), "notify": notify_debug(d)}
    if key == "e":
        return {"lines": dump_evtchn(d), "notify": []}
    return {"lines": [], "notify": []}
