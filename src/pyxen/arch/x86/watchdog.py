"""Noticing what a vCPU does inside KVM_RUN without an exit: HLT and VMCALL.

Xen sees every HLT (hvm_hlt) and every VMCALL/VMMCALL (hvm_hypercall) as a VM exit. KVM
with its in-kernel irqchip keeps HLT to itself (the vCPU sleeps in the kernel until its
LAPIC has an interrupt), and kvm_pvm spins inside KVM_RUN on a VMCALL. So one thread per
domain looks at each vCPU that has been inside one KVM_RUN for a while, using only what the
host tells about the vCPU's thread (its CPU clock), and asks the vCPU to stop and look at
itself (`probe`: arch/x86/machine.py reads mp_state, RFLAGS and the instruction at RIP):

- a vCPU that sleeps (its thread's CPU time does not move, and the host says the thread
  is not runnable: on a loaded host a busy vCPU waiting for a CPU gets little CPU time
  too) for HALT_AFTER is probed once; again only after it has run something since (a LAPIC
  interrupt woke it in the kernel), or every IDLE_REPROBE. A busy guest is never probed
  for this.
- a vCPU that keeps a CPU busy without exits may be spinning on a VMCALL. While it has made
  a VMCALL within VMCALL_ACTIVE (a guest that uses them makes many) it is probed after
  `fast_wait`: VMCALL_FAST after a probe that found one, doubling with each that did not.
  Otherwise (or once `fast_wait` reaches VMCALL_SLOW) after VMCALL_SLOW, and only if the
  busy time was host kernel time (a VMCALL spin and kvm_pvm's emulated ring 0 are; guest
  user mode is guest time): a guest computing in user mode is never probed, and one that
  made VMCALLs a moment ago a few times (0.5, 1, 2, ... 32 ms into its computation).

It also re-kicks vCPUs with a callback vector waiting for their interrupt window
(`retry_at`, machine.py). Costs: nothing per exit but one counter increment; a probe is
one signal and one return from KVM_RUN (tens of microseconds); the thread wakes every
TICK while nothing is due.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

TICK = 0.05
HALT_AFTER = 0.02
IDLE_REPROBE = 1.0
IDLE_CPU_SHARE = 0.25  # below this share of a CPU, a vCPU in KVM_RUN counts as asleep
RAN_SINCE_PROBE = 0.0005  # s of CPU time: "it ran something since its last probe"
VMCALL_FAST = 0.0005
VMCALL_SLOW = 0.05
VMCALL_ACTIVE = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class VcpuWatch:
    """Per-vCPU state shared by the vCPU thread (exits, now, done_*) and the watchdog."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # [exits, armed] in C memory, shared with the C vCPU loop (_vcpuloop.c): returns
    # from KVM_RUN (the vCPU thread counts them), and "a callback vector is pending for
    # this vCPU" (machine.py); read and written through the properties below.
    ctl: ctypes.Array = field(default_factory=lambda: (ctypes.c_uint64 * 2)())
    now: bool = False  # work for the vCPU thread at its next return from KVM_RUN
    probe: bool = False  # the watchdog asks for a probe
    retry_at: float | None = None  # when to look at the callback again
    backoff: float = 0.0
    last_vmcall: float = -1e9  # monotonic time of the last VMCALL found by a probe
    fast_wait: float = VMCALL_FAST  # doubles with each probe that finds no VMCALL
    ident: int | None = None  # the vCPU thread (pthread id, native id, CPU clock)
    native_id: int | None = None
    clock: int | None = None
    # the watchdog's view of the current KVM_RUN
    seen_exits: int = -1
    seen_cpu: float = 0.0
    seen_at: float = 0.0
    kernel_ticks: int | None = None  # stime when the current busy stretch was first seen
    kernel_at: float = 0.0
    # set by the vCPU thread after a probe: where it was then
    done_exits: int = -1
    done_cpu: float = 0.0
    done_at: float = 0.0

    @property
    def exits(self) -> int:
        return self.ctl[0]

    @exits.setter
    def exits(self, n: int) -> None:
        self.ctl[0] = n

    @property
    def armed(self) -> bool:
        return bool(self.ctl[1])

    @armed.setter
    def armed(self, on: bool) -> None:
        self.ctl[1] = 1 if on else 0


def thread_cpu() -> float:
    return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


def _task_stat(native_id: int) -> list[bytes] | None:
    """The fields of /proc/self/task/TID/stat after the command name (state first)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def kernel_ticks(native_id: int) -> int | None:
    """Host kernel time (stime, clock ticks) of a thread of this process. Guest time is
    user time (utime) to Linux."""
    fields = _task_stat(native_id)
    try:
        return int(fields[12]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def runnable(native_id: int) -> bool:
    """The thread is running or waiting for a CPU (state R), not asleep (a vCPU halted in
    KVM_RUN sleeps in the kernel: S)."""
    fields = _task_stat(native_id)
    return bool(fields) and fields[0] == b"R"


class Watchdog:
    """The thread; `kick_work(i)` is machine.py's way to stop vCPU i for a look."""

    def __init__(self, name: str, watches: list[VcpuWatch], running: Callable[[int], bool],
                 kick_work: Callable[[int], None], alive: Callable[[], bool]) -> None:
        self.watches = watches
        self.running = running
        self.kick_work = kick_work
        self.alive = alive
        self.cond = threading.Condition()
        self.probes = 0
        self.why: Counter[str] = Counter()  # probes by reason: halted? vmcall? kernel?
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self) -> None:
        self.thread.start()

    def poke(self) -> None:
        """A deadline moved closer (a callback retry was armed)."""
        with self.cond:
            self.cond.notify()

    def _run(self) -> None:
        while self.alive():
            wake = self.scan(time.monotonic())
            with self.cond:
                self.cond.wait(max(0.0, wake - time.monotonic()))

    def _probe(self, i: int, w: VcpuWatch, why: str) -> None:
        self.probes += 1
        self.why[why] += 1
        w.probe = True
        self.kick_work(i)

    def scan(self, now: float) -> float:
        """One look at every vCPU; returns when to look again."""
        wake = now + TICK
        for i, w in enumerate(self.watches):
            if w.armed and w.retry_at is not None:
                if now >= w.retry_at:
                    w.retry_at = None
                    self.kick_work(i)
                else:
                    wake = min(wake, w.retry_at)
            if w.clock is None or not self.running(i) or w.probe:
                w.seen_exits = -1
                continue
            if now - w.last_vmcall < VMCALL_ACTIVE:  # see a new KVM_RUN soon after it starts
                wake = min(wake, now + w.fast_wait / 2)
            try:
                cpu = time.clock_gettime(w.clock)
            except OSError:  # the thread has just ended
                continue
            if w.exits != w.seen_exits:  # it came out since the last look: not stuck
                w.seen_exits, w.seen_cpu, w.seen_at, w.kernel_ticks = w.exits, cpu, now, None
                continue
            in_run = now - w.seen_at
            busy = cpu - w.seen_cpu
            if busy < IDLE_CPU_SHARE * in_run:  # asleep in KVM_RUN: halted?
                if in_run < HALT_AFTER:
                    wake = min(wake, w.seen_at + HALT_AFTER)
                elif ((w.done_exits != w.exits or cpu - w.done_cpu > RAN_SINCE_PROBE
                       or now - w.done_at > IDLE_REPROBE)
                      and (w.native_id is None or not runnable(w.native_id))):
                    self._probe(i, w, "halted?")  # (a runnable one is only preempted)
                continue
            if now - w.last_vmcall < VMCALL_ACTIVE and w.fast_wait < VMCALL_SLOW:
                # busy, and it makes VMCALLs: look soon (sooner the more often it is one)
                if in_run >= w.fast_wait:
                    self._probe(i, w, "vmcall")
                else:
                    wake = min(wake, w.seen_at + w.fast_wait)
                continue
            if w.native_id is None:
                continue
            if w.kernel_ticks is None:  # busy: note from here how its time is spent
                w.kernel_ticks, w.kernel_at = kernel_ticks(w.native_id), now
                wake = min(wake, now + VMCALL_SLOW)
                continue
            if now - w.kernel_at < VMCALL_SLOW:
                wake = min(wake, w.kernel_at + VMCALL_SLOW)
                continue
            ticks = kernel_ticks(w.native_id)
            if ticks is not None and ticks - w.kernel_ticks >= \
                    0.5 * (now - w.kernel_at) * CLK_TCK:
                self._probe(i, w, "kernel")  # host kernel time: a VMCALL spin, or emulated ring 0
            else:  # guest time: it is computing; look again later
                w.kernel_ticks, w.kernel_at = ticks, now
        return wake
