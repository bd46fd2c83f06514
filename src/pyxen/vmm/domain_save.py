"""The VMM's half of save/restore: the libxc part of Xen's migration stream.

Save (libxc's xc_domain_save for an HVM/PVH domain): with the domain paused, every
populated pfn goes out in PAGE_DATA records (the special console/xenstore pages and the
pages Xen placed in the physmap included), then X86_TSC_INFO, HVM_CONTEXT (Xen's HVM save
format: hypervisor/hvm_save.py, arch/x86/vcpu_save.py) and HVM_PARAMS. The page phase is
its own function so live migration can send everything, then (after the pause) only a
given pfn set: `send_pages(d, writer, pfns)`, then `send_state(d, machine, writer)`.

Restore (xc_domain_restore): the VMM was built without a kernel; `restore_stream` fills
memory, loads every vCPU and the HVM params the toolstack restores. What Xen does not
carry over is not carried over here either: event channels (the guest rebinds them; the
store and console channels are the new domain's, allocated by the toolstack), the
shared_info and vcpu_info placement, grant table frames and timers (the guest maps,
registers and arms them again when SCHEDOP_shutdown(SHUTDOWN_suspend) returns 0).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Protocol

from ..arch.x86 import kvm_abi as K
from ..arch.x86.hypercall_page import HYPERCALL_PORT
from ..arch.x86.kvm import KvmError
from ..arch.x86.vcpu_save import MSR_TSC, get_msrs, load_vcpu, save_vcpu, set_tsc
from ..hypervisor import hvm_save
from ..hypervisor.hvm import set_callback_via
from ..hypervisor.p2m import PAGE_SIZE
from ..hypervisor.public import hvm_op as H
from ..hypervisor.public import hvm_save as S
from ..hypervisor.shared_info import system_time_ns

BATCH = 1024  # pfns per PAGE_DATA record (libxc's MAX_BATCH_SIZE)

# The HVM params libxc's write_hvm_params sends (non-zero ones only): xc_sr_save_x86_hvm.c.
SAVED_PARAMS = (0, 1, 5, 6, 27, 28, 29, 37, 17, 19, 9, 12, 34, 32, 33, 36, 38)
# Those the toolstack (not the stream) sets in the new domain.
TOOLSTACK_PARAMS = {H.HVM_PARAM_STORE_EVTCHN, H.HVM_PARAM_CONSOLE_EVTCHN}
# Placed pages that are not the domain's to save (another domain's granted frames).
NOT_SAVED_KINDS = {"foreign"}
# Exits KVM completes only at the next KVM_RUN (Documentation/virt/kvm/api.rst).
COMPLETED_AT_NEXT_RUN = {K.KVM_EXIT_IO, K.KVM_EXIT_MMIO, K.KVM_EXIT_X86_RDMSR,
                         K.KVM_EXIT_X86_WRMSR, K.KVM_EXIT_XEN}


class StreamOut(Protocol):
    def page_data(self, pfns: list[int], pages: bytes | memoryview) -> None: ...
    def tsc_info(self, mode: int, khz: int, nsec: int, incarnation: int) -> None: ...
    def hvm_params(self, params: dict[int, int]) -> None: ...
    def hvm_context(self, blob: bytes) -> None: ...


class RestoreError(Exception):
    """The image cannot be loaded into this domain; the message names the record."""


# --- save ------------------------------------------------------------------------------------

def complete_pending_exits(machine: Any) -> None:
    """The domain is paused; a vCPU parked right after a port I/O, MMIO, MSR or Xen exit
    has that instruction half done inside KVM (RIP not yet past it, a hypercall's result
    still in the sync area). One KVM_RUN with immediate_exit finishes it without running
    guest code, as KVM's API asks before state is saved. A vCPU started by VCPUOP_up
    whose context is not loaded yet gets it loaded now."""
    d = machine.domain
    for i, kv in enumerate(machine.vcpus):
        v = d.vcpus[i]
        run = kv.run_struct
        last = run.exit_reason
        if (last == K.KVM_EXIT_IO and run.u.io.port == HYPERCALL_PORT
                and not run.kvm_dirty_regs and not v.blocked):
            # Parked inside a long hypercall (preempt_check) that has not returned: Xen
            # would save a continuation, RIP at the hypercall, so that the restored guest
            # issues it again. The exit stays pending (this domain finishes the call if it
            # resumes); the saved RIP is put back on the `out` where KVM's emulator has
            # already moved past it.
            _rewind_to_hypercall(machine, kv)
            continue
        if machine.watches[i].exits and (last in COMPLETED_AT_NEXT_RUN
                                         or run.kvm_dirty_regs):
            run.immediate_exit = 1
            try:
                kv.run()
            except KvmError:
                pass
            run.kvm_dirty_regs = 0
            if v.blocked and last == K.KVM_EXIT_IO:
                # Parked inside SCHEDOP_block/poll: on Xen the hypercall has returned 0
                # already and the vCPU is descheduled; that is the state to save.
                regs = kv.get_regs()
                regs.rax = 0
                kv.set_regs(regs)
        if v.pending_context is not None:
            machine.load_pending_context(v, kv)


def _rewind_to_hypercall(machine: Any, kv: Any) -> None:
    """RIP back on the stub's `out %eax, $HYPERCALL_PORT` (e7 9e, then c3: docs/
    hypercalls.md) if it is just past it. Only KVM's copy changes: the vCPU thread's
    registers (the sync area, written back when its handler returns) keep the real RIP."""
    from ..arch.x86.paging import EFER_LMA, PagingState, translate
    from ..hypervisor.guest_access import GuestAccess

    regs, s = kv.get_regs(), kv.get_sregs()
    long_mode = bool(s.efer & EFER_LMA) and bool(s.cs.l)
    va = regs.rip if long_mode else (s.cs.base + regs.rip) & 0xFFFFFFFF
    mem = machine.domain.memory
    st = PagingState(s.cr0, s.cr3, s.cr4, s.efer)
    g = GuestAccess(mem, lambda a, wr: translate(mem.read, st, a, wr), compat=not long_mode)
    try:
        before = g.read(va - 2, 3)
    except Exception:  # noqa: BLE001 - not mapped: leave it
        return
    if before == bytes([0xE7, HYPERCALL_PORT, 0xC3]):
        regs.rip -= 2
        kv.set_regs(regs)


def saved_pfns(d: Any) -> list[int]:
    """Every pfn with content the domain owns: its RAM and the pages placed in its
    physmap (special pages, shared_info, grant frames, firmware), ascending."""
    p2m = d.memory.p2m
    with p2m.lock:
        out: list[int] = []
        base = 0
        pop = p2m._pop
        for w in p2m.windows:
            i = base
            end = base + w.pages
            while i < end:
                j = pop.find(1, i, end)
                if j < 0:
                    break
                k = pop.find(0, j, end)
                k = end if k < 0 else k
                out.extend(range(w.gfn + j - base, w.gfn + k - base))
                i = k
            base = end
        placed = {g for g, p in {**p2m.overlay, **p2m.outside}.items()
                  if p.kind not in NOT_SAVED_KINDS}
        return sorted(set(out) | placed)


def page_batches(d: Any, pfns: Iterable[int]) -> Iterator[tuple[list[int], bytes]]:
    """(pfns, their pages) in batches of at most BATCH; pfns that became holes are
    skipped. Runs of pfns contiguous in the store are copied with one slice."""
    p2m = d.memory.p2m
    view = d.memory.store.view
    batch: list[int] = []
    parts: list[memoryview] = []
    run_start = run_end = -1
    for pfn in pfns:
        off = p2m.page_offset(pfn)
        if off is None:
            continue
        if off != run_end:
            if run_end > run_start >= 0:
                parts.append(view[run_start:run_end])
            run_start = off
        run_end = off + PAGE_SIZE
        batch.append(pfn)
        if len(batch) == BATCH:
            parts.append(view[run_start:run_end])
            yield batch, b"".join(parts)
            batch, parts, run_start, run_end = [], [], -1, -1
    if batch:
        parts.append(view[run_start:run_end])
        yield batch, b"".join(parts)


def send_pages(d: Any, out: StreamOut, pfns: Iterable[int] | None = None) -> int:
    """PAGE_DATA records for pfns (default: every saved pfn); returns pages sent."""
    n = 0
    for batch, data in page_batches(d, saved_pfns(d) if pfns is None else pfns):
        out.page_data(batch, data)
        n += len(batch)
    return n


def hvm_context(machine: Any) -> bytes:
    """XEN_DOMCTL_gethvmcontext: HEADER, then per vCPU CPU (online ones), CPU_XSAVE,
    LAPIC, LAPIC_REGS, MTRR, TSC_ADJUST, grouped by type as Xen writes them."""
    d = machine.domain
    cpuid = machine.kvm.supported_cpuid()
    eax = next((e.eax for e in cpuid if e.function == 1), 0)
    per_vcpu = [save_vcpu(kv, i, d.vcpus[i].online, cpuid) for i, kv in enumerate(machine.vcpus)]
    records = [hvm_save.header(eax, machine.tsc_khz)]
    order = (S.HVM_SAVE_CPU, S.HVM_SAVE_LAPIC, S.HVM_SAVE_LAPIC_REGS, S.HVM_SAVE_MTRR,
             S.CPU_XSAVE_CODE, S.HVM_SAVE_TSC_ADJUST)
    for code in order:
        for recs in per_vcpu:
            records += [r for r in recs if r.typecode == code]
    return hvm_save.pack(records)


def send_state(d: Any, machine: Any, out: StreamOut) -> None:
    """What follows the pages (x86_hvm_end_of_checkpoint): TSC_INFO, HVM_CONTEXT,
    HVM_PARAMS."""
    out.tsc_info(0, machine.tsc_khz, system_time_ns(d), 0)
    out.hvm_context(hvm_context(machine))
    out.hvm_params({i: d.hvm_params[i] for i in SAVED_PARAMS if d.hvm_params.get(i)})


def save_domain(d: Any, machine: Any, out: BinaryIO, domain_config: dict[str, Any], *,
                xl_header: bool = True) -> dict[str, Any]:
    """The whole image onto `out` (the domain is paused and stays so). Returns counts.
    StreamError (from the writer) when the file cannot take it."""
    from ..toolstack.migration import SaveWriter

    t0 = time.monotonic()
    complete_pending_exits(machine)
    w = SaveWriter(out, domain_config, xl_header=xl_header)
    w.begin()
    pages = send_pages(d, w)
    send_state(d, machine, w)
    w.finish()
    return {"pages": pages, "bytes": w.bytes_written,
            "seconds": round(time.monotonic() - t0, 6)}


# --- restore ---------------------------------------------------------------------------------

def load_pages(d: Any, pages: Iterable[tuple[int, memoryview]], where: str) -> list[int]:
    """PAGE_DATA into the domain: a pfn that is a hole now is populated first (libxc
    populates every pfn it receives). Returns the pfns written."""
    p2m = d.memory.p2m
    view = d.memory.store.view
    done = []
    for pfn, data in pages:
        off = p2m.page_offset(pfn)
        if off is None:
            try:
                ok = p2m.populate(pfn)
            except Exception as e:  # noqa: BLE001 - P2MError: beyond the address width
                raise RestoreError(f"{where}: pfn {pfn:#x}: {e}") from None
            off = p2m.page_offset(pfn) if ok else None
            if off is None:
                raise RestoreError(f"{where}: cannot populate pfn {pfn:#x}")
        view[off:off + PAGE_SIZE] = data
        done.append(pfn)
    return done


def load_runs(d: Any, runs: Iterable[tuple[int, memoryview]], where: str) -> list[int]:
    """load_pages for runs of consecutive pfns: a run that is contiguous RAM in the store
    (the usual case) is one copy."""
    p2m = d.memory.p2m
    view = d.memory.store.view
    done: list[int] = []
    for first, data in runs:
        n = len(data) // PAGE_SIZE
        off = p2m.page_offset(first)
        last = p2m.page_offset(first + n - 1)
        if (off is not None and last == off + (n - 1) * PAGE_SIZE
                and p2m.window_offset(first + n - 1) == last
                and p2m.window_offset(first) == off
                and all(p2m.page_offset(first + k) is not None for k in range(n))):
            view[off:off + n * PAGE_SIZE] = data
            done.extend(range(first, first + n))
        else:
            done += load_pages(d, ((first + k, data[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])
                                   for k in range(n)), where)
    return done


def release_unsent(d: Any, unsent: Iterable[int]) -> int:
    """RAM the new domain was built with but the image did not carry (ballooned out on the
    source) is given back, so the domain holds what it held."""
    p2m = d.memory.p2m
    n = 0
    for pfn in sorted(unsent):
        if p2m.is_populated(pfn):
            p2m.release(pfn)
            n += 1
    return n


def load_context(machine: Any, blob: bytes) -> None:
    d = machine.domain
    try:
        records = hvm_save.unpack(blob, len(machine.vcpus))
    except hvm_save.HvmContextError as e:
        raise RestoreError(str(e)) from None
    by_vcpu: dict[int, dict[int, bytes]] = {}
    saved_tsc: dict[int, int] = {}
    for r in records[1:]:
        by_vcpu.setdefault(r.instance, {})[r.typecode] = r.data
        if r.typecode == S.HVM_SAVE_CPU:
            saved_tsc[r.instance] = S.hvm_hw_cpu.from_buffer_copy(r.data).tsc
    if 0 not in saved_tsc:
        raise RestoreError("HVM context: no CPU record for vCPU 0")
    # Xen latches the shared_info layout when the guest installs its hypercall page or
    # callback (hvm_latch_shinfo_size); a restored guest does neither again.
    efer = S.hvm_hw_cpu.from_buffer_copy(by_vcpu[0][S.HVM_SAVE_CPU]).msr_efer
    d.has_32bit_shinfo = not efer & (1 << 10)  # EFER.LMA
    with d.cond:
        for i, kv in enumerate(machine.vcpus):
            try:
                up = load_vcpu(kv, by_vcpu.get(i, {}))
            except KvmError as e:
                raise RestoreError(f"HVM context: vCPU {i}: KVM refused the state: "
                                   f"{e.strerror}") from None
            v = d.vcpus[i]
            v.online = v.initialised = up
        for i, kv in enumerate(machine.vcpus):  # the guest's TSC goes on from where it was
            set_tsc(kv, saved_tsc.get(i, saved_tsc[0]))
        machine._tsc_ref = [(get_msrs(kv, [MSR_TSC])[MSR_TSC], time.monotonic_ns())
                            for kv in machine.vcpus]


def load_params(d: Any, params: dict[int, int]) -> None:
    """XEN_DOMCTL/HVMOP set_param for what the stream carries: the special pfns must be
    where this domain has them (libxc's fixed special pfns), the callback via takes
    effect (hvm_set_callback_via), the store/console channels stay the new ones."""
    for idx, val in params.items():
        if idx in TOOLSTACK_PARAMS:
            continue
        if idx in (H.HVM_PARAM_STORE_PFN, H.HVM_PARAM_CONSOLE_PFN):
            have = d.hvm_params.get(idx)
            if have is not None and have != val:
                raise RestoreError(f"HVM_PARAMS: param {idx} is pfn {val:#x}, pyxen keeps "
                                   f"that page at {have:#x}")
            continue
        d.hvm_params[idx] = val
        if idx == H.HVM_PARAM_CALLBACK_IRQ and val:
            set_callback_via(d, val)


def restore_stream(d: Any, machine: Any, inp: BinaryIO, *, xl_header: bool = False
                   ) -> dict[str, Any]:
    """Read an image (from libxl's stream header on, unless xl_header) into the domain,
    which is built and paused. RestoreError/StreamError name the failing record."""
    from ..toolstack.migration import (
        End,
        HvmContext,
        HvmParams,
        PageData,
        SaveReader,
        TscInfo,
    )

    t0 = time.monotonic()
    r = SaveReader(inp, xl_header=xl_header)
    r.begin()
    received: set[int] = set()
    # What the built domain owns, less each PAGE_DATA record as it comes: the end of the
    # image has only the remainder to release (one pass over a 512 MiB domain's 131k pfns
    # at the end took ~40 ms, all of it guest downtime in a live migration).
    unsent = set(saved_pfns(d))
    context = params = None
    tsc_khz = 0
    tsc_nsec: int | None = None
    n = 0
    end_at = 0.0
    for rec in r.records():
        if isinstance(rec, PageData):
            done = load_runs(d, rec.runs(), f"PAGE_DATA record {n}")
            received.update(done)
            unsent.difference_update(done)
            n += 1
        elif isinstance(rec, TscInfo):
            tsc_khz, tsc_nsec = rec.khz, rec.nsec
        elif isinstance(rec, HvmContext):
            context = rec.blob
        elif isinstance(rec, HvmParams):
            params = rec.params
        elif isinstance(rec, End):
            end_at = time.time()
            break
    if context is None:
        raise RestoreError("the image has no HVM_CONTEXT record")
    if tsc_khz and abs(tsc_khz - machine.tsc_khz) > machine.tsc_khz // 1000:
        d.log(f"d{d.domid}: restore: the image's TSC runs at {tsc_khz} kHz, this host's at "
              f"{machine.tsc_khz} kHz (no TSC scaling: the guest sees this host's rate)")
    released = release_unsent(d, unsent)
    if tsc_nsec is not None:
        # Xen system time goes on from the saved point, as the TSC does: the guest sees
        # no time pass while it was saved (its clocks stay monotonic).
        d.created_ns = time.monotonic_ns() - tsc_nsec
    load_context(machine, context)
    if params:
        load_params(d, params)
    # `received` goes back to the caller, to be dropped after the restored event: freeing
    # a 512 MiB domain's 131k pfn objects takes ~2 ms, guest downtime in a migration.
    return {"pages": len(received), "released": released,
            "seconds": round(time.monotonic() - t0, 6), "received": received,
            "end_at": end_at}


def resume(machine: Any, cancelled: bool) -> None:
    """XEN_DOMCTL_resumedomain after a save that did not destroy the domain (xl save -c,
    or a failed save): a guest that suspended sees SCHEDOP_shutdown return 1 (libxc's
    modify_returncode writes rax of vCPU 0), then the domain runs again."""
    d = machine.domain
    with d.cond:
        suspended = d.shutdown_reason == 2  # SHUTDOWN_suspend
    if suspended and cancelled:
        kv = machine.vcpus[0]
        complete_pending_exits(machine)
        regs = kv.get_regs()
        regs.rax = 1
        kv.set_regs(regs)
    with d.cond:
        if suspended:
            d.shutdown_reason = d.shutdown_code = None
        d.cond.notify_all()


__all__ = ["save_domain", "send_pages", "send_state", "saved_pfns", "restore_stream",
           "complete_pending_exits", "resume", "RestoreError"]
