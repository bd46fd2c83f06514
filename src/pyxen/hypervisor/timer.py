"""vCPU timers: VCPUOP_{set,stop}_{periodic,singleshot}_timer and set_timer_op, delivered as
VIRQ_TIMER on the vCPU (Xen's common/sched/core.c semantics).

Deadlines are in the guest's system time (ns since the domain was created, as in
vcpu_time_info). One thread per domain sleeps until the earliest deadline; firing a timer
refreshes the vCPU's vcpu_time_info and sends VIRQ_TIMER (nothing happens if the guest has
not bound it, as in Xen).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .hypercall import HypercallContext
from .public import errno as E
from .public import vcpu as VC
from .public.event_channel import VIRQ_TIMER
from .public.hvm_op_evtchn import (
    VCPU_SSHOTTMR_future,
    vcpu_set_periodic_timer,
    vcpu_set_singleshot_timer,
)

if TYPE_CHECKING:
    from .domain import Domain

ETIME = 62  # xen/errno.h
MILLISECS = 1_000_000
STIME_DELTA_MAX = (1 << 64) - 1 >> 2
LONG_TIMEOUT_NS = 100 * MILLISECS  # set_timer_op: absurd timeouts fire in 100 ms
MAX_SLEEP_S = 3600.0  # the timer thread's longest wait (Condition.wait overflows time_t)


@dataclass(order=True)
class _Entry:
    when: int  # monotonic ns
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class TimerQueue:
    """One thread running callbacks at monotonic-ns deadlines (Xen's per-CPU timer heap)."""

    def __init__(self, name: str = "timers") -> None:
        self._heap: list[_Entry] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._cancelled = 0
        self.errors = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def add(self, when_ns: int, fn: Callable[[], None]) -> _Entry:
        e = _Entry(when_ns, next(self._seq), fn)
        with self._cond:
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                # a guest re-arming far-future timers in a loop must not grow the heap
                self._heap = [x for x in self._heap if not x.cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0
            heapq.heappush(self._heap, e)
            if self._heap[0] is e:
                self._cond.notify()
        return e

    def cancel(self, e: _Entry | None) -> None:
        if e is None:
            return
        with self._cond:
            if not e.cancelled:
                e.cancelled = True
                self._cancelled += 1

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    while self._heap and self._heap[0].cancelled:
                        heapq.heappop(self._heap)
                        self._cancelled = max(0, self._cancelled - 1)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    left = self._heap[0].when - time.monotonic_ns()
                    if left <= 0:
                        break
                    # a guest's deadline may be centuries away: wake up hourly at most
                    self._cond.wait(min(left / 1e9, MAX_SLEEP_S))
                if self._stopped:
                    return
                e = heapq.heappop(self._heap)
            if not e.cancelled:
                try:
                    e.fn()
                except Exception as exc:  # noqa: BLE001 - one bad timer must not stop all
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"


@dataclass
class VcpuTimers:
    periodic_period: int = 0
    periodic_last: int = 0
    periodic: _Entry | None = None
    singleshot: _Entry | None = None


class DomainTimers:
    """The timers of one domain's vCPUs; `fire(vcpu_id)` delivers a timer event."""

    def __init__(self, domain: Domain, fire: Callable[[int], None]) -> None:
        self.domain = domain
        self.fire = fire
        self.queue = TimerQueue(name=f"d{domain.domid}-timers")
        self.vcpus = [VcpuTimers() for _ in range(domain.max_vcpus)]
        self.lock = threading.Lock()

    def now(self) -> int:
        """The guest's system time (ns)."""
        return time.monotonic_ns() - self.domain.created_ns

    def _at(self, stime: int, fn: Callable[[], None]) -> _Entry:
        return self.queue.add(stime + self.domain.created_ns, fn)

    # --- single shot ---------------------------------------------------------------------

    def set_singleshot(self, vid: int, deadline: int) -> None:
        with self.lock:
            t = self.vcpus[vid]
            self.queue.cancel(t.singleshot)
            t.singleshot = self._at(deadline, lambda: self._singleshot_fired(vid))

    def _singleshot_fired(self, vid: int) -> None:
        with self.lock:
            self.vcpus[vid].singleshot = None
        self.fire(vid)

    def stop_singleshot(self, vid: int) -> None:
        with self.lock:
            t = self.vcpus[vid]
            self.queue.cancel(t.singleshot)
            t.singleshot = None

    # --- periodic -------------------------------------------------------------------------

    def set_periodic(self, vid: int, period: int) -> None:
        """vcpu_set_periodic_timer: first event one period from now (0 stops it)."""
        with self.lock:
            t = self.vcpus[vid]
            self.queue.cancel(t.periodic)
            t.periodic = None
            t.periodic_period = period
            t.periodic_last = self.now()
            if period:
                t.periodic = self._at(t.periodic_last + period,
                                      lambda: self._periodic_work(vid))

    def _periodic_work(self, vid: int) -> None:
        """periodic_timer_work: the next event is a full period after this one fired, so
        n events never take less than n periods."""
        send = False
        with self.lock:
            t = self.vcpus[vid]
            if not t.periodic_period:
                return
            now = self.now()
            nxt = t.periodic_last + t.periodic_period
            if now >= nxt:
                send = True
                t.periodic_last = now
                nxt = now + t.periodic_period
            t.periodic = self._at(nxt, lambda: self._periodic_work(vid))
        if send:
            self.fire(vid)

    def destroy(self) -> None:
        with self.lock:
            for t in self.vcpus:
                self.queue.cancel(t.periodic)
                self.queue.cancel(t.singleshot)
                t.periodic_period = 0
        self.queue.stop()


def timer_event(d: Domain, vid: int) -> None:
    """send_timer_event: fresh vcpu_time_info, then VIRQ_TIMER on that vCPU."""
    from .shared_info import update_vcpu_time

    ev = getattr(d, "evtchn", None)
    if ev is None or d.dying or d.is_shutdown:
        return
    update_vcpu_time(d, d.vcpus[vid])
    ev.send_virq(vid, VIRQ_TIMER)


def domain_timers(d: Domain) -> DomainTimers | None:
    return getattr(d, "timers", None)


def vcpu_timer_op(ctx: HypercallContext, cmd: int, vid: int, arg: int) -> int | None:
    """The timer sub-ops of vcpu_op; None for any other sub-op."""
    if cmd not in (VC.VCPUOP_set_periodic_timer, VC.VCPUOP_stop_periodic_timer,
                   VC.VCPUOP_set_singleshot_timer, VC.VCPUOP_stop_singleshot_timer):
        return None
    timers = domain_timers(ctx.domain)
    if timers is None:
        return -E.ENOSYS
    if cmd == VC.VCPUOP_set_periodic_timer:
        p = ctx.guest.read_struct(arg, vcpu_set_periodic_timer)
        if p.period_ns < MILLISECS or p.period_ns > STIME_DELTA_MAX:
            return -E.EINVAL
        timers.set_periodic(vid, p.period_ns)
        return 0
    if cmd == VC.VCPUOP_stop_periodic_timer:
        timers.set_periodic(vid, 0)
        return 0
    if vid != ctx.vcpu.id:  # single-shot timers belong to the calling vCPU only
        return -E.EINVAL
    if cmd == VC.VCPUOP_set_singleshot_timer:
        s = ctx.guest.read_struct(arg, vcpu_set_singleshot_timer)
        if s.flags & VCPU_SSHOTTMR_future and s.timeout_abs_ns < timers.now():
            return -ETIME
        deadline = s.timeout_abs_ns
        if deadline >> 63:  # as Xen's set_timer(s_time_t): negative, so in the past
            deadline -= 1 << 64
        timers.set_singleshot(vid, deadline)
        return 0
    timers.stop_singleshot(vid)
    return 0


def do_set_timer_op(ctx: HypercallContext) -> int:
    """set_timer_op(s_time_t timeout): the calling vCPU's single-shot timer; 0 stops it."""
    return _set_timer_op(ctx, ctx.arg(0))


def compat_set_timer_op(ctx: HypercallContext) -> int:
    """set_timer_op(u32 lo, s32 hi) of a 32-bit caller: the timeout in two registers."""
    return _set_timer_op(ctx, (ctx.arg(0) & 0xFFFFFFFF) | (ctx.arg(1) & 0xFFFFFFFF) << 32)


def _set_timer_op(ctx: HypercallContext, timeout: int) -> int:
    timers = domain_timers(ctx.domain)
    if timers is None:
        return -E.ENOSYS
    if timeout >> 63:
        timeout -= 1 << 64  # s_time_t: a negative timeout is in the past, fires at once
    vid = ctx.vcpu.id
    if timeout == 0:
        timers.stop_singleshot(vid)
        return 0
    now = timers.now()
    offset = timeout - now
    if offset > 0 and offset >> 50:
        # Linux's jiffies wrap can produce timeouts days away: fire in 100 ms, as Xen does.
        timers.set_singleshot(vid, now + LONG_TIMEOUT_NS)
    else:
        timers.set_singleshot(vid, timeout)
    return 0
