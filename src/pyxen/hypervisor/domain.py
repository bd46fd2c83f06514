"""A domain and its vCPUs as Xen sees them: lifecycle, pause/unpause, block/wake, shutdown.

The arch layer (arch/x86) runs each vCPU on a thread and asks the domain, under one
condition variable, whether that vCPU may enter the guest; hypercall handlers change the
domain's state through the methods here and never touch KVM.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .memory import GuestMemory
from .public.sched import SHUTDOWN_NAMES, SHUTDOWN_crash

Emit = Callable[[dict[str, Any]], None]
LINE_MAX = 1024  # guest debug output: longer lines are split


class Platform(Protocol):
    """What the arch layer does for the domain (implemented by arch/x86/machine.py)."""

    def kick(self, vcpu_id: int) -> None: ...
    def guest_tsc(self, vcpu_id: int) -> int: ...
    tsc_khz: int


@dataclass
class VCPU:
    id: int
    online: bool = False
    initialised: bool = False
    blocked: bool = False
    running: bool = False  # in the guest or in a handler (not parked, not blocked)
    woken: bool = False
    pending_context: Any = None  # vcpu_hvm_context to load before the next entry
    vcpu_info_gpa: int | None = None  # registered with VCPUOP_register_vcpu_info
    cpu_time: float = 0.0  # of finished threads
    thread_ident: int | None = None


@dataclass
class Domain:
    domid: int
    name: str
    memory: GuestMemory
    max_vcpus: int
    max_memory: int  # bytes
    uuid: uuidlib.UUID = field(default_factory=uuidlib.uuid4)
    emit: Emit = lambda ev: None

    def __post_init__(self) -> None:
        self.cond = threading.Condition()
        self.vcpus = [VCPU(i) for i in range(self.max_vcpus)]
        self.vcpus[0].online = self.vcpus[0].initialised = True
        self.pause_count = 1  # built paused
        self.vnuma = None  # its virtual NUMA topology (hypervisor/vnuma.py), if any
        self.shutdown_reason: int | None = None
        self.shutdown_code: int | None = None
        self.preset_shutdown_code: int | None = None
        self.dying = False
        self.platform: Platform | None = None
        self.hvm_params: dict[int, int] = {}
        self.shared_info_gpa: int | None = None
        self.has_32bit_shinfo = False  # shared_info/vcpu_info layout (shared_info.py)
        self.unknown_hypercalls: Counter[int] = Counter()
        self.created_ns = time.monotonic_ns()
        self.console: Any = None  # hypervisor.console.Console
        self._line_bufs: dict[str, bytearray] = {}
        self._line_lock = threading.Lock()
        # Event channels, grant table and vCPU timers (hypervisor/event_channel.py,
        # grant_table.py, timer.py); None until the domain builder creates them.
        self.evtchn: Any = None
        self.grant_table: Any = None
        self.timers: Any = None
        # arch/x86/emulate.py: what the host's KVM could not emulate ('q' shows it)
        self.emulation: Any = None

    # --- logging -------------------------------------------------------------------------

    def log(self, text: str) -> None:
        """A `(XEN) ` line of the hypervisor log."""
        for line in text.splitlines() or [""]:
            self.emit({"event": "log", "line": f"(XEN) {line}"})

    def guest_debug(self, stream: str, data: bytes) -> None:
        """Guest debug output (port 0xe9, console_io): `(dN) ` lines, flushed at newline."""
        with self._line_lock:
            self._guest_debug(stream, data)

    def _guest_debug(self, stream: str, data: bytes) -> None:
        # A line ends at a newline (not kept) or when a byte arrives after 1024 of them.
        # Whole runs of bytes are moved at once: a guest may write megabytes in one call.
        buf = self._line_bufs.setdefault(stream, bytearray())
        i, n = 0, len(data)
        while i < n:
            if len(buf) >= LINE_MAX:
                self._emit_line(buf)
                if data[i] == 0x0A:
                    i += 1
                continue
            end = min(n, i + LINE_MAX - len(buf))
            nl = data.find(b"\n", i, end)
            if nl < 0:
                buf += data[i:end]
                i = end
            else:
                buf += data[i:nl]
                self._emit_line(buf)
                i = nl + 1

    def _emit_line(self, buf: bytearray) -> None:
        text = buf.decode("utf-8", "replace").rstrip("\r")
        self.emit({"event": "log", "line": f"(d{self.domid}) {text}"})
        buf.clear()

    # --- state ---------------------------------------------------------------------------

    @property
    def is_shutdown(self) -> bool:
        return self.shutdown_reason is not None

    def state(self) -> str:
        with self.cond:
            if self.shutdown_reason is not None:
                return "crashed" if self.shutdown_reason == SHUTDOWN_crash else "shutdown"
            if self.pause_count:
                return "paused"
            online = [v for v in self.vcpus if v.online]
            if online and all(v.blocked for v in online):
                return "blocked"
            return "running"

    def online_vcpus(self) -> int:
        return sum(1 for v in self.vcpus if v.online)

    def may_run(self, v: VCPU) -> bool:
        return (v.online and not self.pause_count and self.shutdown_reason is None
                and not self.dying)

    # --- scheduling hooks used by the vCPU threads ----------------------------------------

    def wait_runnable(self, v: VCPU, on_go: Callable[[], None]) -> bool:
        """Park until v may enter the guest; False when the domain is dying."""
        with self.cond:
            v.running = False
            self.cond.notify_all()
            while not self.may_run(v):
                if self.dying:
                    return False
                self.cond.wait()
            v.running = True
            on_go()
            return True

    def _kick_running(self) -> None:
        for v in self.vcpus:
            if v.running and self.platform is not None:
                self.platform.kick(v.id)

    def _wait_stopped(self, except_ident: int | None = None) -> None:
        while any(v.running and v.thread_ident != except_ident for v in self.vcpus):
            self.cond.wait(0.5)
            self._kick_running()

    def pause(self) -> None:
        """Xen's domain_pause: returns once no vCPU is in the guest."""
        with self.cond:
            self.pause_count += 1
            self._kick_running()
            self._wait_stopped(threading.get_ident())

    def unpause(self) -> None:
        with self.cond:
            if self.pause_count:
                self.pause_count -= 1
            self.cond.notify_all()

    def block(self, v: VCPU, timeout_ns: int | None = None,
              ready: Callable[[], bool] | None = None) -> None:
        """SCHEDOP_block/poll: sleep until woken (an event), the timeout, or the end.

        `ready` says an event is already waiting (e.g. evtchn_upcall_pending); it is
        checked under the lock after `woken` is cleared, so a wake-up is never lost.
        """
        deadline = None if timeout_ns is None else time.monotonic() + timeout_ns / 1e9
        with self.cond:
            v.blocked, v.woken, v.running = True, False, False
            self.cond.notify_all()
            while (not v.woken and not (ready is not None and ready()) and not self.dying
                   and self.shutdown_reason is None):
                if deadline is None:
                    self.cond.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
            v.blocked = False
            while self.pause_count and not self.dying and self.shutdown_reason is None:
                self.cond.wait()
            v.running = True

    def preempt_check(self, v: VCPU) -> bool:
        """Between the iterations of a long hypercall (where Xen would preempt it with a
        continuation): while the domain is being paused, v parks here as if it were back
        in the guest, so `pause` never waits for a guest-sized loop; False when the
        domain is shutting down or dying (the caller stops with -EINTR)."""
        if self.dying or self.shutdown_reason is not None:
            return False
        if not self.pause_count:
            return True
        return self.wait_runnable(v, lambda: None) and self.shutdown_reason is None

    def wake(self, v: VCPU) -> None:
        with self.cond:
            v.woken = True
            self.cond.notify_all()

    def vcpu_up(self, v: VCPU) -> None:
        with self.cond:
            v.online = True
            self.cond.notify_all()

    def vcpu_down(self, v: VCPU) -> None:
        with self.cond:
            v.online = False
            if v.thread_ident != threading.get_ident() and self.platform is not None:
                self.platform.kick(v.id)
            self.cond.notify_all()

    # --- shutdown --------------------------------------------------------------------------

    def shutdown(self, reason: int) -> None:
        """Xen's domain_shutdown: stop every vCPU, then tell the toolstack (once)."""
        with self.cond:
            if self.shutdown_reason is not None or self.dying:
                return
            if self.preset_shutdown_code is not None:
                reason = self.preset_shutdown_code
            self.shutdown_reason = reason
            self.shutdown_code = reason
            self._kick_running()
            self.cond.notify_all()
        self.log(f"Domain {self.domid} ({self.name}) shutdown: "
                 f"{SHUTDOWN_NAMES.get(reason, str(reason))}")
        self.report_unknown_hypercalls()
        threading.Thread(target=self._announce_shutdown, args=(threading.get_ident(),),
                         daemon=True, name="shutdown").start()

    def _announce_shutdown(self, caller: int) -> None:
        with self.cond:
            self._wait_stopped()
        reason = self.shutdown_reason if self.shutdown_reason is not None else SHUTDOWN_crash
        self.emit({"event": "shutdown", "reason": SHUTDOWN_NAMES.get(reason, "crash"),
                   "code": self.shutdown_code})

    def crash(self, report: str) -> None:
        """domain_crash: log why (registers etc.) and shut down with reason crash."""
        self.log(report)
        self.shutdown(SHUTDOWN_crash)

    def destroy(self) -> None:
        with self.cond:
            self.dying = True
            self._kick_running()
            self.cond.notify_all()

    def report_unknown_hypercalls(self) -> None:
        if self.unknown_hypercalls:
            from .public.xen import HYPERCALL_NAMES
            counts = ", ".join(f"{nr} ({HYPERCALL_NAMES.get(nr, '?')}) x{n}"
                               for nr, n in sorted(self.unknown_hypercalls.items()))
            self.log(f"d{self.domid}: unimplemented hypercalls: {counts}")

    def cpu_time(self) -> float:
        total = 0.0
        for v in self.vcpus:
            total += v.cpu_time
            if v.thread_ident is not None:
                try:
                    clk = time.pthread_getcpuclockid(v.thread_ident)
                    total += time.clock_gettime(clk)
                except (OSError, ProcessLookupError):
                    pass
        return total
