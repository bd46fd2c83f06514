"""sched_op: yield, block, poll, shutdown (+ code), remote_shutdown, watchdog."""

from __future__ import annotations

import os
import threading

from .event_channel import block as evtchn_block
from .event_channel import poll as evtchn_poll
from .hypercall import HypercallContext
from .public import errno as E
from .public import sched as S
from .public.xen import DOMID_SELF
from .shared_info import system_time_ns
from .xsm import target_error

MAX_POLL_PORTS = 128
NR_DOMAIN_WATCHDOG_TIMERS = 2


def do_sched_op(ctx: HypercallContext) -> int:
    cmd, arg = ctx.sarg(0), ctx.arg(1)
    d, g = ctx.domain, ctx.guest
    if cmd == S.SCHEDOP_yield:
        os.sched_yield()
        return 0
    if cmd == S.SCHEDOP_block:
        evtchn_block(d, ctx.vcpu, ctx.interrupts_enabled)
        return 0
    if cmd == S.SCHEDOP_shutdown:
        reason = g.read_struct(arg, S.sched_shutdown).reason
        if reason > S.SHUTDOWN_MAX:
            return -E.EINVAL
        d.shutdown(reason)
        return 0
    if cmd == S.SCHEDOP_shutdown_code:
        reason = g.read_struct(arg, S.sched_shutdown).reason
        if reason > S.SHUTDOWN_MAX:
            return -E.EINVAL
        d.preset_shutdown_code = reason
        return 0
    if cmd == S.SCHEDOP_poll:
        poll = g.read_struct(arg, S.sched_poll)
        if poll.nr_ports > MAX_POLL_PORTS:
            return -E.EINVAL
        raw = g.read(poll.ports, 4 * poll.nr_ports)  # the ports must be readable
        ports = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]
        # Sleep until one of the ports is pending or the timeout (absolute system time;
        # 0 = none).
        timeout = None
        if poll.timeout:
            timeout = max(0, poll.timeout - system_time_ns(d))
        return evtchn_poll(d, ctx.vcpu, ports, timeout, ctx.interrupts_enabled)
    if cmd == S.SCHEDOP_remote_shutdown:
        rs = g.read_struct(arg, S.sched_remote_shutdown)
        # Xen: the target is looked up by id (DOMID_SELF is no id: -ESRCH), then
        # XSM_DM_PRIV: only a privileged domain (or the target's device model) may shut a
        # domain down this way, itself included.
        if rs.domain_id == DOMID_SELF:
            return -E.ESRCH
        return target_error(d, rs.domain_id) or -E.EPERM
    if cmd == S.SCHEDOP_watchdog:
        return _watchdog(ctx, g.read_struct(arg, S.sched_watchdog))
    return -E.ENOSYS


def _watchdog(ctx: HypercallContext, wd: S.sched_watchdog) -> int:
    """Xen's domain watchdogs: id 0 creates one (returns its id), timeout 0 destroys it."""
    d = ctx.domain
    wid, timeout = wd.id, wd.timeout
    timers: dict[int, threading.Timer] = d.__dict__.setdefault("watchdogs", {})

    def fire() -> None:
        d.log(f"Watchdog timer fired for domain {d.domid}")
        d.shutdown(S.SHUTDOWN_watchdog)

    def arm(i: int) -> None:
        t = threading.Timer(timeout, fire)
        t.daemon = True
        timers[i] = t
        t.start()

    if wid == 0:
        for i in range(1, NR_DOMAIN_WATCHDOG_TIMERS + 1):
            if i not in timers:
                arm(i)
                return i
        return -E.ENOSPC
    if wid not in timers:
        return -E.EINVAL
    timers.pop(wid).cancel()
    if timeout:
        arm(wid)
    return 0

