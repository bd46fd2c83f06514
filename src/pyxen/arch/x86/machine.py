"""A domain realised on KVM: the VM, guest RAM slots, one thread per vCPU running KVM_RUN,
and the exit dispatch that turns exits into Xen events (hypercalls, debug port, MSRs,
crashes). Also what Xen sees as exits and KVM keeps to itself (arch/x86/watchdog.py): the
vCPU looks at itself when asked (`_work`): HLT with interrupts off takes it down
(hvm_hlt), a VMCALL/VMMCALL at RIP is a hypercall, and the domain-wide callback vector is
injected when its interrupt window is open (arch/x86/irq.py)."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
import threading
import time
import traceback
from collections.abc import Callable

from ...hypervisor import hypercall as HC
from ...hypervisor.domain import VCPU, Domain
from ...hypervisor.guest_access import GuestAccess
from ...hypervisor.hypercall_table import dispatch
from ...hypervisor.public import errno as E
from ...hypervisor.shared_info import latch_shinfo_size
from . import kvm_abi as K
from .cpuid import guest_cpuid
from .emulate import emulate_instruction
from .hypercall_page import HYPERCALL_PORT, hypercall_page
from .irq import UpcallInjector, get_events, get_mp_state, inject_direct, interrupt_window_open
from .kvm import Kvm, KvmError, Vcpu, Vm, _ioctl
from .msr import XEN_HYPERCALL_MSR, install_msr_filter
from .paging import EFER_LMA, PagingState, translate
from .vcpu_state import hvm_context_state, pvh_boot_state
from .vmcall import HYPERCALL_INSNS, enable_xen_hcall_intercept
from .watchdog import VMCALL_FAST, VMCALL_SLOW, VcpuWatch, Watchdog, thread_cpu

try:  # the vCPU exit loop in C (setup.py builds it; without it the Python loop below runs)
    from . import _vcpuloop
except ImportError:  # pragma: no cover - a checkout built without a compiler
    _vcpuloop = None  # type: ignore[assignment]

XEN_DEBUG_PORT = 0xE9
PURE_LOOP_ENV = "PYXEN_PURE_VCPU_LOOP"  # set (non-empty): run the pure-Python loop
KICK_SIGNAL = signal.SIGUSR1
TSS_ADDR = 0xFFFBD000
MSR_IA32_TSC = 0x10
U64 = (1 << 64) - 1
RFLAGS_IF = 1 << 9

# The exit path reads the exit header from the vCPU's mmap with one precompiled struct
# (instead of ctypes fields, a memoryview and a bytes copy per exit).
_RUN = K.kvm_run
_IMMEDIATE_EXIT = _RUN.immediate_exit.offset
# exit_reason, then the KVM_EXIT_IO fields of the union: direction, size, port, count,
# data_offset (garbage for other exits, never used for them).
_EXIT_HDR = struct.Struct(f"<I{_RUN.u.offset - _RUN.exit_reason.offset - 4}xBBHIQ")
assert _RUN.exit_reason.offset + _EXIT_HDR.size == _RUN.u.offset + ctypes.sizeof(K.kvm_run_io)
_U32 = struct.Struct("<I")
# KVM leaves exit_reason as it was when KVM_RUN returns EINTR (immediate_exit), although
# the exit it names is complete by then; the save path (vmm/domain_save.py) tells a vCPU
# parked mid-hypercall from one that merely stopped by it, so a kick rewrites it.
_EXIT_REASON = _RUN.exit_reason.offset
_SYNC_SREGS = _RUN.s.offset + K.kvm_sync_regs.sregs.offset
_CS_L = _SYNC_SREGS + K.kvm_sregs.cs.offset + K.kvm_segment.l.offset
_SS_DPL = _SYNC_SREGS + K.kvm_sregs.ss.offset + K.kvm_segment.dpl.offset

# A callback vector that cannot be injected yet (interrupts off) is looked at again after
# these delays (doubling), and once more after an injection (Xen re-injects while
# evtchn_upcall_pending stays set).
CALLBACK_RETRY_MIN = 0.0005
CALLBACK_RETRY_MAX = 0.016
CALLBACK_RECHECK = 0.002


def c_loop_available() -> bool:
    """Whether vCPU threads run the C exit loop (_vcpuloop.c): built, and not turned off."""
    return _vcpuloop is not None and not os.environ.get(PURE_LOOP_ENV)


def install_kick_handler() -> None:
    """Main thread only: a no-op handler, so the kick signal interrupts KVM_RUN."""
    signal.signal(KICK_SIGNAL, lambda *_: None)


class X86Machine:
    """Implements hypervisor.domain.Platform for one domain."""

    def __init__(self, domain: Domain, kvm: Kvm) -> None:
        self.domain = domain
        self.kvm = kvm
        self.vm = Vm(kvm)
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.create_irqchip()
        host = kvm.supported_cpuid()
        self._attach_p2m(domain, host)
        self.vcpus: list[Vcpu] = []
        for i in range(domain.max_vcpus):
            v = self.vm.create_vcpu(i)
            if i == 0:
                self.tsc_khz = v.tsc_khz()
            v.set_cpuid(guest_cpuid(host, i, domain.domid, self.tsc_khz))
            v.run_struct.kvm_valid_regs = K.KVM_SYNC_X86_REGS | K.KVM_SYNC_X86_SREGS
            self.vcpus.append(v)
        # After the memory slots: KVM_X86_SET_MSR_FILTER waits out an SRCU grace period,
        # ~15 ms on a VM that has no slots yet and ~7 ms once it has (measured here).
        install_msr_filter(self.vm)
        # One (guest TSC, host time) pair per vCPU, taken while none runs: guest_tsc()
        # extrapolates from it, so no ioctl is ever issued on another thread's vCPU.
        self._tsc_ref = [(v.get_msr(MSR_IA32_TSC), time.monotonic_ns()) for v in self.vcpus]
        self.threads: list[threading.Thread] = []
        self.watches = [VcpuWatch() for _ in self.vcpus]
        self.watchdog = Watchdog(f"d{domain.domid}-watchdog", self.watches,
                                 running=lambda i: domain.vcpus[i].running,
                                 kick_work=self.kick_work,
                                 alive=lambda: not domain.dying)
        # KVM_EXIT_XEN for VMCALL/VMMCALL where the host's KVM can (KVM_CAP_XEN_HVM).
        self.xen_hcall_intercept = enable_xen_hcall_intercept(kvm, self.vm)
        self.stats = {"vmcalls": 0, "callback_injections": 0, "hlt_down": 0}
        domain.platform = self

    # --- memory slots ----------------------------------------------------------------------

    def _attach_p2m(self, domain: Domain, host: list[K.kvm_cpuid_entry2]) -> None:
        """The p2m (hypervisor/p2m.py) places pages through KVM memory slots; gfns are
        bounded by the physical address width the guest's CPUID reports."""
        p2m = domain.memory.p2m
        phys_bits = next((e.eax & 0xFF for e in host if e.function == 0x80000008), 0)
        if phys_bits:
            p2m.max_gfn = (1 << (phys_bits - 12)) - 1
        try:
            max_slots = self.kvm.check_extension(K.KVM_CAP_NR_MEMSLOTS)
        except KvmError:
            max_slots = 0
        p2m.attach(self.set_memory_slot, max_slots or 32)

    def set_memory_slot(self, slot: int, gpa: int, size: int, hva: int) -> None:
        """KVM_SET_USER_MEMORY_REGION; size 0 deletes the slot."""
        self.vm.set_memory_region(slot, gpa, size, hva if size else 0)

    def upcall_injector(self) -> UpcallInjector:
        """The Injector for the domain's event channels (hypervisor/event_channel.py)."""
        return UpcallInjector(self.vm.fd, self.domain, self.callback_pending)

    # --- Platform --------------------------------------------------------------------------

    def kick(self, vcpu_id: int) -> None:
        """Force vCPU vcpu_id out of KVM_RUN (caller holds domain.cond)."""
        self.vcpus[vcpu_id].run_struct.immediate_exit = 1
        ident = self.domain.vcpus[vcpu_id].thread_ident
        if ident is not None:
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def kick_work(self, vcpu_id: int) -> None:
        """Have vCPU vcpu_id look at itself (`_work`) at its next return from KVM_RUN, and
        make that return happen now. Any thread."""
        w = self.watches[vcpu_id]
        with w.lock:
            w.now = True
            self.vcpus[vcpu_id].run_struct.immediate_exit = 1
            ident = w.ident
        if ident is not None:
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def callback_pending(self, vcpu_id: int) -> None:
        """hvm_assert_evtchn_irq for the domain-wide callback vector: Xen kicks the vCPU,
        which injects the vector at its next entry while upcall_pending is set."""
        self.watches[vcpu_id].armed = True
        self.kick_work(vcpu_id)

    def guest_tsc(self, vcpu_id: int) -> int:
        tsc0, t0 = self._tsc_ref[vcpu_id]
        return tsc0 + (time.monotonic_ns() - t0) * self.tsc_khz // 1_000_000

    # --- lifecycle -------------------------------------------------------------------------

    def boot(self, entry: int, start_info: int) -> None:
        """vCPU 0 at the PVH entry point; the others wait for VCPUOP_initialise/up."""
        v0 = self.vcpus[0]
        regs, sregs = pvh_boot_state(v0.get_sregs(), entry, start_info)
        v0.set_sregs(sregs)
        v0.set_regs(regs)
        for i in range(len(self.vcpus)):
            t = threading.Thread(target=self._vcpu_thread, args=(i,), daemon=True,
                                 name=f"d{self.domain.domid}v{i}")
            self.threads.append(t)
        for t in self.threads:
            t.start()
        self.watchdog.start()

    def join(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # --- the vCPU loop -----------------------------------------------------------------------

    def _vcpu_thread(self, i: int) -> None:
        d = self.domain
        v = d.vcpus[i]
        kv = self.vcpus[i]
        w = self.watches[i]
        v.thread_ident = threading.get_ident()
        with w.lock:
            w.ident, w.native_id = v.thread_ident, threading.get_native_id()
            w.clock = time.pthread_getcpuclockid(v.thread_ident)
        m = kv._map

        def go() -> None:
            with w.lock:  # kick_work sets `now` then immediate_exit under it: none is lost
                m[_IMMEDIATE_EXIT] = 1 if w.now else 0

        try:
            if c_loop_available():
                self._c_vcpu_loop(v, kv, w, go)
            else:
                self._py_vcpu_loop(v, kv, w, go)
        finally:
            with w.lock:
                w.ident = w.clock = None
            with d.cond:
                try:
                    v.cpu_time += time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)
                finally:
                    v.thread_ident = None
                    v.running = False
                    d.cond.notify_all()

    def load_pending_context(self, v: VCPU, kv: Vcpu) -> None:
        ctx, v.pending_context = v.pending_context, None
        regs, sregs = hvm_context_state(kv.get_sregs(), ctx)
        kv.set_sregs(sregs)
        kv.set_regs(regs)
        kv.set_mp_state(K.KVM_MP_STATE_RUNNABLE)

    def _c_vcpu_loop(self, v: VCPU, kv: Vcpu, w: VcpuWatch, go: Callable[[], None]) -> None:
        """The exit loop in C (_vcpuloop.c): it returns here only for what needs more than
        a hypercall handler: kicks, the callback vector, and every other kind of exit."""
        d = self.domain
        m = kv._map
        c_run, ARMED, EXIT_INTR = _vcpuloop.run, _vcpuloop.ARMED, K.KVM_EXIT_INTR
        may_run, handle_exit, work = d.may_run, self._exit, self._work
        fd, run_addr, ctl_addr = kv.fd, kv.run_addr, ctypes.addressof(w.ctl)
        hypercall = self._hypercall_entry(v, kv)
        fast = getattr(getattr(d, "evtchn", None), "fast_send", None)  # sends done in C
        fast_addr = fast.addr if fast is not None else 0
        while True:
            if not (v.running and not m[_IMMEDIATE_EXIT] and may_run(v)):
                if not d.wait_runnable(v, go):
                    break
            try:
                if v.pending_context is not None:
                    self.load_pending_context(v, kv)
                try:
                    rc = c_run(fd, run_addr, ctl_addr, hypercall, HYPERCALL_PORT,
                               XEN_DEBUG_PORT, fast_addr)
                except OSError as e:
                    raise KvmError(e.errno or 0, f"KVM_RUN: {e.strerror}") from None
                if rc < 0 and rc != ARMED:  # kicked: the vCPU's state is complete here
                    _U32.pack_into(m, _EXIT_REASON, EXIT_INTR)  # no exit left half done
                    if w.now:
                        work(v, kv, w)
                    continue
                if rc > 0 and rc != EXIT_INTR:
                    handle_exit(v, kv, rc)
                if w.armed and kv.sync_regs.rflags & RFLAGS_IF:
                    with w.lock:  # a callback vector may be taken now: look (see below)
                        w.now = True
                        m[_IMMEDIATE_EXIT] = 1
            except Exception as e:  # a bug or a hostile guest: this domain only
                self._crash(v, kv, f"pyxen internal error: {type(e).__name__}: {e}",
                            traceback.format_exc())

    def _hypercall_entry(self, v: VCPU, kv: Vcpu) -> Callable[..., int]:
        """The callable the C loop hands each hypercall to, with the argument registers
        already read: it builds the context, dispatches, and stops the C loop (through
        immediate_exit) when the handler left the vCPU unable to run on (VCPUOP_down of
        itself, a pause), as the Python loop's check before each entry would."""
        d = self.domain
        m = kv._map
        s = kv.sync_sregs
        mem = d.memory
        read = mem.read
        may_run, Context = d.may_run, HC.HypercallContext

        def guest_maker(compat: bool) -> Callable[[], GuestAccess]:
            def make_guest() -> GuestAccess:  # only for handlers that take pointers
                st = PagingState(s.cr0, s.cr3, s.cr4, s.efer)
                return GuestAccess(mem, lambda va, w: translate(read, st, va, w), compat)
            return make_guest

        make_guest = (guest_maker(True), guest_maker(False))  # by long mode

        def hypercall(nr: int, a1: int, a2: int, a3: int, a4: int, a5: int,
                      flags: int) -> int:
            ret = dispatch(Context(d, v, (a1, a2, a3, a4, a5), make_guest[flags & 1],
                                   bool(flags & 1), bool(flags & 2)), nr)
            if not (v.running and may_run(v)):
                m[_IMMEDIATE_EXIT] = 1
            return ret

        return hypercall

    def _py_vcpu_loop(self, v: VCPU, kv: Vcpu, w: VcpuWatch, go: Callable[[], None]) -> None:
        """The same loop in pure Python (no C compiler, or PYXEN_PURE_VCPU_LOOP set)."""
        d = self.domain
        # The hot loop: everything it touches per exit is a local.
        m = kv._map
        fd = kv.fd
        ioctl, get_errno, exit_hdr, u32 = _ioctl, ctypes.get_errno, _EXIT_HDR.unpack_from, \
            _U32.unpack_from
        u32_into = _U32.pack_into
        may_run, hypercall, handle_exit, work = d.may_run, self._hypercall, self._exit, \
            self._work
        KVM_RUN, EXIT_IO, IO_OUT, EXIT_INTR = (K.KVM_RUN, K.KVM_EXIT_IO, K.KVM_EXIT_IO_OUT,
                                               K.KVM_EXIT_INTR)
        while True:
            # Fast path: still allowed to run and nobody kicked us (a kick sets
            # immediate_exit under domain.cond, so KVM_RUN would return at once).
            if not (v.running and not m[_IMMEDIATE_EXIT] and may_run(v)):
                if not d.wait_runnable(v, go):
                    break
            try:
                if v.pending_context is not None:
                    self.load_pending_context(v, kv)
                if ioctl(fd, KVM_RUN, 0) < 0:  # Vcpu.run, inlined
                    w.exits += 1
                    e = get_errno()
                    if e in (errno.EINTR, errno.EAGAIN):
                        # kicked: the vCPU's state is complete here (pending I/O
                        # finished, registers in the sync area), so it can be looked at
                        u32_into(m, _EXIT_REASON, EXIT_INTR)  # no exit left half done
                        if w.now:
                            work(v, kv, w)
                        continue
                    raise KvmError(e, f"KVM_RUN: {os.strerror(e)}")
                w.exits += 1
                reason, direction, size, port, count, data = exit_hdr(m, 8)
                if reason == EXIT_IO and direction == IO_OUT and port != XEN_DEBUG_PORT:
                    if port == HYPERCALL_PORT and size == 4 and count == 1:
                        hypercall(v, kv, u32(m, data)[0])
                    # else: a port nobody emulates: writes are ignored
                elif reason != EXIT_INTR:
                    handle_exit(v, kv, reason)
                if w.armed and kv.sync_regs.rflags & RFLAGS_IF:
                    # a callback vector waits and may be taken now: finish this exit
                    # (KVM_RUN returns at once), then look
                    with w.lock:
                        w.now = True
                        m[_IMMEDIATE_EXIT] = 1
            except Exception as e:  # a bug or a hostile guest: this domain only
                self._crash(v, kv, f"pyxen internal error: {type(e).__name__}: {e}",
                            traceback.format_exc())

    # --- what KVM keeps to itself: HLT, VMCALL, the callback vector ----------------------

    def _work(self, v: VCPU, kv: Vcpu, w: VcpuWatch) -> None:
        """After a kick (kick_work), in the vCPU's thread, outside KVM_RUN."""
        with w.lock:
            w.now = False
            probe, w.probe = w.probe, False
        if probe:
            self._probe(v, kv, w)
        if w.armed:
            if v.online and self.domain.may_run(v):
                self._deliver_callback(v, kv, w)
            else:  # paused or down: look once it may run again (go() keeps the kick)
                with w.lock:
                    w.now = True
        if probe:
            w.done_exits, w.done_cpu, w.done_at = w.exits, thread_cpu(), time.monotonic()

    def _probe(self, v: VCPU, kv: Vcpu, w: VcpuWatch) -> None:
        """The watchdog saw this vCPU sit in KVM_RUN: halted (HLT), or spinning on a
        VMCALL/VMMCALL (kvm_pvm), or just busy."""
        from ...hypervisor.hvm import hvm_hlt

        r = kv.sync_regs
        if get_mp_state(kv) == K.KVM_MP_STATE_HALTED:
            if not r.rflags & RFLAGS_IF:
                # Nothing but an NMI can wake it. Make it runnable again (after its HLT)
                # for a later VCPUOP_up, as Xen resumes a vCPU brought back up.
                kv.set_mp_state(K.KVM_MP_STATE_RUNNABLE)
                self.stats["hlt_down"] += 1
                hvm_hlt(self.domain, v, False)
            return
        insn = self._insn_at_rip(kv, 3)
        if insn not in HYPERCALL_INSNS:  # busy: look later next time
            w.fast_wait = min(2 * w.fast_wait, VMCALL_SLOW)
        else:
            w.last_vmcall, w.fast_wait = time.monotonic(), VMCALL_FAST
            self.stats["vmcalls"] += 1
            s = kv.sync_sregs
            long_mode = bool(s.efer & EFER_LMA) and bool(kv._map[_CS_L])
            nr = r.rax if long_mode else r.rax & 0xFFFFFFFF
            rip = r.rip
            self._hypercall(v, kv, nr)
            r.rip = (rip + len(insn)) & (U64 if long_mode else 0xFFFFFFFF)
            kv.run_struct.kvm_dirty_regs = K.KVM_SYNC_X86_REGS

    def _insn_at_rip(self, kv: Vcpu, n: int) -> bytes | None:
        """n bytes at CS:RIP through the guest's page tables, or None if unreadable."""
        r, s = kv.sync_regs, kv.sync_sregs
        long_mode = bool(s.efer & EFER_LMA) and bool(kv._map[_CS_L])
        va = r.rip if long_mode else (s.cs.base + r.rip) & 0xFFFFFFFF
        mem = self.domain.memory
        st = PagingState(s.cr0, s.cr3, s.cr4, s.efer)
        g = GuestAccess(mem, lambda a, wr: translate(mem.read, st, a, wr), compat=not long_mode)
        try:
            return g.read(va, n)
        except Exception:  # noqa: BLE001 - not mapped, not RAM: not a hypercall
            return None

    def _deliver_callback(self, v: VCPU, kv: Vcpu, w: VcpuWatch) -> None:
        """hvm_vcpu_has_pending_irq for the callback vector: offered while upcall_pending
        is set, injected if the vCPU can take an interrupt now, else looked at again."""
        ev = self.domain.evtchn
        vector = ev.callback_vector if ev is not None else 0
        w.armed = False  # first: an event raised from here on arms it again
        if not vector or not ev.upcall_pending(v.id):
            w.retry_at, w.backoff = None, 0.0
            return
        w.armed = True
        events = get_events(kv)
        if interrupt_window_open(kv.sync_regs.rflags, events):
            inject_direct(kv, events, vector)
            self.stats["callback_injections"] += 1
            w.backoff = 0.0
            delay = CALLBACK_RECHECK
        else:
            w.backoff = min(CALLBACK_RETRY_MAX, max(CALLBACK_RETRY_MIN, w.backoff * 2))
            delay = w.backoff
        w.retry_at = time.monotonic() + delay
        self.watchdog.poke()

    def _exit(self, v: VCPU, kv: Vcpu, reason: int) -> None:
        run = kv.run_struct
        if reason == K.KVM_EXIT_IO:
            io = kv.io
            if io.direction == K.KVM_EXIT_IO_OUT:
                data = bytes(kv.io_data(io.size, io.count))
                if io.port == HYPERCALL_PORT and io.size == 4 and io.count == 1:
                    self._hypercall(v, kv, int.from_bytes(data, "little"))
                elif io.port == XEN_DEBUG_PORT:
                    self.domain.guest_debug("e9", data[:: io.size])
            else:
                kv.io_data(io.size, io.count)[:] = b"\xff" * (io.size * io.count)
        elif reason == K.KVM_EXIT_MMIO:
            mmio = run.u.mmio
            if not mmio.is_write:
                for j in range(8):
                    mmio.data[j] = 0xFF
        elif reason == K.KVM_EXIT_X86_WRMSR:
            m = run.u.msr
            m.error = 0 if m.index == XEN_HYPERCALL_MSR and self._hypercall_msr(m.data, kv) else 1
        elif reason == K.KVM_EXIT_X86_RDMSR:
            run.u.msr.error = 1
        elif reason == K.KVM_EXIT_XEN:
            self._xen_exit(v, kv)
        elif reason == K.KVM_EXIT_HLT:
            self.domain.block(v, 10_000_000)
        elif reason == K.KVM_EXIT_SHUTDOWN:
            self._crash(v, kv, "triple fault")
        elif reason == K.KVM_EXIT_INTERNAL_ERROR:
            ie = run.u.internal
            why: str | None = ""
            if ie.suberror == K.KVM_INTERNAL_ERROR_EMULATION:  # arch/x86/emulate.py
                why = emulate_instruction(self.domain, v.id, kv)
                if why is None:
                    return
            what = {K.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
                    K.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
                    K.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failure"}.get(
                        ie.suberror, f"internal error {ie.suberror}")
            data = " ".join(f"{ie.data[j]:#x}" for j in range(min(ie.ndata, 16)))
            self._crash(v, kv, f"KVM {what} (data: {data or 'none'})"
                        + (f"; pyxen cannot emulate it: {why}" if why else ""))
        elif reason == K.KVM_EXIT_FAIL_ENTRY:
            self._crash(v, kv, "VM entry failed (hardware reason "
                        f"{run.u.fail_entry.hardware_entry_failure_reason:#x})")
        elif reason == K.KVM_EXIT_SYSTEM_EVENT:
            kind = run.u.system_event.type
            if kind == K.KVM_SYSTEM_EVENT_RESET:
                self.domain.shutdown(1)
            elif kind == K.KVM_SYSTEM_EVENT_SHUTDOWN:
                self.domain.shutdown(0)
            else:
                self._crash(v, kv, f"system event {kind}")
        else:
            self._crash(v, kv, f"unexpected KVM exit {K.EXIT_NAMES.get(reason, reason)}")

    def _xen_exit(self, v: VCPU, kv: Vcpu) -> None:
        """KVM_EXIT_XEN (KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL): a VMCALL/VMMCALL that KVM
        decoded; KVM writes `result` to rax and skips the instruction on the next entry."""
        xen = kv.run_struct.u.xen
        if xen.type != K.KVM_EXIT_XEN_HCALL:
            self._crash(v, kv, f"unexpected KVM_EXIT_XEN type {xen.type}")
            return
        self.stats["vmcalls"] += 1
        h = xen.hcall
        if h.cpl:  # hvm_hypercall: not from guest user mode
            h.result = -E.EPERM & U64
            return
        self._hypercall(v, kv, h.input if h.longmode else h.input & 0xFFFFFFFF)
        kv.run_struct.kvm_dirty_regs = 0  # the result goes through `result` alone
        h.result = kv.sync_regs.rax

    def _hypercall_msr(self, value: int, kv: Vcpu) -> bool:
        """Fill the hypercall page; False (-> #GP) for a bad page index or address."""
        gpa, idx = value & ~0xFFF & U64, value & 0xFFF
        if idx != 0 or not self.domain.memory.is_ram(gpa, 4096):
            return False
        latch_shinfo_size(self.domain, bool(kv.sync_sregs.efer & EFER_LMA and kv._map[_CS_L]))
        self.domain.memory.write(gpa, hypercall_page())
        return True

    def _hypercall(self, v: VCPU, kv: Vcpu, nr: int) -> None:
        # Plain ctypes fields of the sync regs are the cheapest reads (measured: cheaper
        # than one struct.unpack of all of them); nested segment fields are read as bytes
        # of the mmap, as `s.cs.l` would build a kvm_segment object per access.
        m = kv._map
        r = kv.sync_regs
        s = kv.sync_sregs
        long_mode = bool(s.efer & EFER_LMA) and bool(m[_CS_L])
        if m[_SS_DPL] != 0:
            ret = -E.EPERM  # as Xen: hypercalls from guest user mode are refused
        else:
            if long_mode:
                args = (r.rdi, r.rsi, r.rdx, r.r10, r.r8)
            else:
                mk = 0xFFFFFFFF
                args = (r.rbx & mk, r.rcx & mk, r.rdx & mk, r.rsi & mk, r.rdi & mk)
            mem = self.domain.memory

            def make_guest() -> GuestAccess:  # only for handlers that take pointers
                st = PagingState(s.cr0, s.cr3, s.cr4, s.efer)
                read = mem.read
                return GuestAccess(mem, lambda va, w: translate(read, st, va, w),
                                   compat=not long_mode)

            ctx = HC.HypercallContext(self.domain, v, args, make_guest, long_mode,
                                      interrupts_enabled=bool(r.rflags & RFLAGS_IF))
            ret = dispatch(ctx, nr)
        r.rax = ret & (U64 if long_mode else 0xFFFFFFFF)
        kv.run_struct.kvm_dirty_regs = K.KVM_SYNC_X86_REGS

    # --- crash reports -----------------------------------------------------------------------

    def _crash(self, v: VCPU, kv: Vcpu, why: str, detail: str = "") -> None:
        d = self.domain
        lines = [f"d{d.domid}v{v.id} {why}: crashing the domain"]
        try:
            lines += register_dump(d.domid, v.id, kv.get_regs(), kv.get_sregs())
        except KvmError as e:
            lines.append(f"(registers unavailable: {e})")
        if detail:
            lines += detail.rstrip().splitlines()
        d.crash("\n".join(lines))


def register_dump(domid: int, vid: int, r: K.kvm_regs, s: K.kvm_sregs) -> list[str]:
    mode = "64-bit" if s.efer & EFER_LMA and s.cs.l else (
        "32-bit" if s.cr0 & 1 else "real mode")
    def q(x: int) -> str:
        return f"{x:016x}"
    return [
        f"----[ d{domid}v{vid} guest state ]----",
        f"RIP:    {s.cs.selector:04x}:[<{q(r.rip)}>]   CPL: {s.ss.dpl}   mode: {mode}",
        f"RFLAGS: {q(r.rflags)}",
        f"rax: {q(r.rax)}   rbx: {q(r.rbx)}   rcx: {q(r.rcx)}",
        f"rdx: {q(r.rdx)}   rsi: {q(r.rsi)}   rdi: {q(r.rdi)}",
        f"rbp: {q(r.rbp)}   rsp: {q(r.rsp)}   r8:  {q(r.r8)}",
        f"r9:  {q(r.r9)}   r10: {q(r.r10)}   r11: {q(r.r11)}",
        f"r12: {q(r.r12)}   r13: {q(r.r13)}   r14: {q(r.r14)}",
        f"r15: {q(r.r15)}   cr0: {q(s.cr0)}   cr4: {q(s.cr4)}",
        f"cr3: {q(s.cr3)}   cr2: {q(s.cr2)}   efer: {q(s.efer)}",
        f"ds: {s.ds.selector:04x}   es: {s.es.selector:04x}   fs: {s.fs.selector:04x}   "
        f"gs: {s.gs.selector:04x}   ss: {s.ss.selector:04x}   cs: {s.cs.selector:04x}",
        f"gdt: {q(s.gdt.base)}/{s.gdt.limit:04x}   idt: {q(s.idt.base)}/{s.idt.limit:04x}   "
        f"tr: {s.tr.selector:04x}",
    ]
