"""A vCPU's state between KVM and Xen's HVM save records (hypervisor/public/hvm_save.py).

Save: KVM_GET_REGS/SREGS/XSAVE/XCRS/LAPIC/MSRS/VCPU_EVENTS/DEBUGREGS -> CPU, CPU_XSAVE,
LAPIC, LAPIC_REGS, MTRR, TSC_ADJUST, as Xen's hvm_save_cpu_ctxt & co write them for a
PVH domain. Load: the reverse, before the vCPU first runs. The caller makes sure no
exit is half done (vmm/domain_save.py: `complete_pending_exits`): KVM finishes a port
I/O or MSR exit only at the next KVM_RUN.
"""

from __future__ import annotations

import ctypes
import errno

from ...hypervisor.hvm_save import HvmRecord
from ...hypervisor.public import hvm_save as S
from . import kvm_abi as K
from .kvm import KvmError, Vcpu, ioctl

MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_TSC_ADJUST = 0x3B
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_MTRRCAP = 0xFE
MSR_PAT = 0x277
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_MTRR_VAR = [0x200 + i for i in range(S.MTRR_VCNT * 2)]
MSR_MTRR_FIXED = [0x250, 0x258, 0x259] + [0x268 + i for i in range(8)]
MSR_TSC_DEADLINE = 0x6E0
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_SHADOW_GS, MSR_TSC_AUX = 0xC0000102, 0xC0000103

_CPU_MSRS = {"sysenter_cs": MSR_SYSENTER_CS, "sysenter_esp": MSR_SYSENTER_ESP,
             "sysenter_eip": MSR_SYSENTER_EIP, "shadow_gs": MSR_SHADOW_GS,
             "msr_lstar": MSR_LSTAR, "msr_star": MSR_STAR, "msr_cstar": MSR_CSTAR,
             "msr_syscall_mask": MSR_SFMASK, "msr_tsc_aux": MSR_TSC_AUX, "tsc": MSR_TSC}
_SEGS = (("cs", "cs"), ("ds", "ds"), ("es", "es"), ("fs", "fs"), ("gs", "gs"),
         ("ss", "ss"), ("tr", "tr"), ("ldtr", "ldt"))

# pending_event: vector 0-7, type 8-10, error_valid 11, valid 31 (Xen's X86_EVENTTYPE_*)
EV_EXT_INTR, EV_NMI, EV_HW_EXCEPTION, EV_SW_INTERRUPT = 0, 2, 3, 4
EV_VALID = 1 << 31
XSTATE_FP_SSE = 0x3
XSAVE_HDR = 512


class kvm_debugregs(ctypes.Structure):
    _fields_ = [("db", ctypes.c_uint64 * 4), ("dr6", ctypes.c_uint64),
                ("dr7", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("reserved", ctypes.c_uint64 * 9)]


KVM_GET_DEBUGREGS = K._ior(0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = K._iow(0xA2, kvm_debugregs)


# --- MSRs ---------------------------------------------------------------------------------

def get_msrs(kv: Vcpu, indices: list[int]) -> dict[int, int]:
    """Values of the MSRs KVM knows; one it refuses reads as 0 (KVM_GET_MSRS stops at the
    first MSR it cannot read, so the rest are asked again)."""
    out: dict[int, int] = {}
    todo = list(indices)
    while todo:
        buf = K.kvm_msrs(len(todo))()
        buf.nmsrs = len(todo)
        for i, idx in enumerate(todo):
            buf.entries[i].index = idx
        n = ioctl(kv.fd, K.KVM_GET_MSRS, buf)
        for i in range(n):
            out[todo[i]] = buf.entries[i].data
        if n < len(todo):
            out[todo[n]] = 0
        todo = todo[n + 1:]
    return out


def set_msrs(kv: Vcpu, values: dict[int, int]) -> list[int]:
    """Write what KVM accepts; returns the indices it refused."""
    refused = []
    todo = list(values.items())
    while todo:
        buf = K.kvm_msrs(len(todo))()
        buf.nmsrs = len(todo)
        for i, (idx, val) in enumerate(todo):
            buf.entries[i].index, buf.entries[i].data = idx, val
        n = ioctl(kv.fd, K.KVM_SET_MSRS, buf)
        if n < len(todo):
            refused.append(todo[n][0])
        todo = todo[n + 1:]
    return refused


# --- segments ---------------------------------------------------------------------------------

def seg_arbytes(s: K.kvm_segment) -> int:
    """Xen's compressed attributes; "unusable" is folded into P, as Xen's VMX code does."""
    present = s.present and not s.unusable
    return (s.type | s.s << 4 | s.dpl << 5 | int(present) << 7 | s.avl << 8 | s.l << 9
            | s.db << 10 | s.g << 11)


def seg_from(sel: int, base: int, limit: int, ar: int) -> K.kvm_segment:
    return K.kvm_segment(base=base, limit=limit, selector=sel, type=ar & 0xF,
                         s=(ar >> 4) & 1, dpl=(ar >> 5) & 3, present=(ar >> 7) & 1,
                         avl=(ar >> 8) & 1, l=(ar >> 9) & 1, db=(ar >> 10) & 1,
                         g=(ar >> 11) & 1, unusable=0 if ar & 0x80 else 1)


# --- xsave -----------------------------------------------------------------------------------

def xsave_size(xcr0: int, cpuid: list[K.kvm_cpuid_entry2]) -> int:
    """Bytes of the standard-format XSAVE area that components in xcr0 need."""
    size = XSAVE_HDR + 64
    for e in cpuid:
        if e.function == 0xD and e.index >= 2 and xcr0 >> e.index & 1:
            size = max(size, e.ebx + e.eax)
    return min(size, 4096)


def _xcr0(kv: Vcpu) -> int:
    x = K.kvm_xcrs()
    try:
        ioctl(kv.fd, K.KVM_GET_XCRS, x)
    except KvmError:
        return XSTATE_FP_SSE
    for i in range(x.nr_xcrs):
        if x.xcrs[i].xcr == 0:
            return x.xcrs[i].value
    return XSTATE_FP_SSE


# --- save ------------------------------------------------------------------------------------

def save_vcpu(kv: Vcpu, vid: int, online: bool,
              cpuid: list[K.kvm_cpuid_entry2]) -> list[HvmRecord]:
    """The per-vCPU records of vCPU vid. As Xen's hvm_save_cpu_ctxt, a vCPU that is down
    has no CPU record (a restore leaves it down, to be initialised again); its LAPIC,
    MTRRs and the rest are saved all the same."""
    recs: list[HvmRecord] = []
    xs = K.kvm_xsave()
    ioctl(kv.fd, K.KVM_GET_XSAVE, xs)
    area = bytes(xs)
    xcr0 = _xcr0(kv)
    msrs = get_msrs(kv, [*_CPU_MSRS.values(), MSR_APIC_BASE, MSR_TSC_DEADLINE, MSR_TSC_ADJUST,
                         MSR_PAT, MSR_MTRRCAP, MSR_MTRR_DEF_TYPE, *MSR_MTRR_VAR,
                         *MSR_MTRR_FIXED])
    if online:
        r, s = kv.get_regs(), kv.get_sregs()
        c = S.hvm_hw_cpu()
        ctypes.memmove(c.fpu_regs, area, 512)
        for n in ("rax", "rbx", "rcx", "rdx", "rbp", "rsi", "rdi", "rsp", "r8", "r9", "r10",
                  "r11", "r12", "r13", "r14", "r15", "rip", "rflags"):
            setattr(c, n, getattr(r, n))
        c.cr0, c.cr2, c.cr3, c.cr4, c.msr_efer = s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        for xen, kvm in _SEGS:
            seg = getattr(s, kvm)
            setattr(c, f"{xen}_sel", seg.selector)
            setattr(c, f"{xen}_limit", seg.limit)
            setattr(c, f"{xen}_base", seg.base)
            setattr(c, f"{xen}_arbytes", seg_arbytes(seg))
        c.idtr_limit, c.idtr_base = s.idt.limit, s.idt.base
        c.gdtr_limit, c.gdtr_base = s.gdt.limit, s.gdt.base
        for field, idx in _CPU_MSRS.items():
            setattr(c, field, msrs[idx])
        dr = kvm_debugregs()
        try:
            ioctl(kv.fd, KVM_GET_DEBUGREGS, dr)
            c.dr0, c.dr1, c.dr2, c.dr3 = dr.db[0], dr.db[1], dr.db[2], dr.db[3]
            c.dr6, c.dr7 = dr.dr6, dr.dr7
        except KvmError:
            c.dr6, c.dr7 = 0xFFFF0FF0, 0x400
        ev = K.kvm_vcpu_events()
        ioctl(kv.fd, K.KVM_GET_VCPU_EVENTS, ev)
        if ev.exception.injected or ev.exception.pending:
            c.pending_event = (ev.exception.nr | EV_HW_EXCEPTION << 8
                               | (1 << 11 if ev.exception.has_error_code else 0) | EV_VALID)
            c.error_code = ev.exception.error_code
        elif ev.nmi.injected:
            c.pending_event = 2 | EV_NMI << 8 | EV_VALID
        elif ev.interrupt.injected:
            kind = EV_SW_INTERRUPT if ev.interrupt.soft else EV_EXT_INTR
            c.pending_event = ev.interrupt.nr | kind << 8 | EV_VALID
        c.flags = S.XEN_X86_FPU_INITIALISED
        recs.append(HvmRecord(S.HVM_SAVE_CPU, vid, bytes(c)))
    xsv = S.hvm_hw_cpu_xsave(xfeature_mask=_supported_xcr0(cpuid), xcr0=xcr0,
                             xcr0_accum=xcr0 | XSTATE_FP_SSE)
    size = xsave_size(xsv.xcr0_accum, cpuid)
    recs.append(HvmRecord(S.CPU_XSAVE_CODE, vid, bytes(xsv)[:24] + area[:size]))
    lapic = K.kvm_lapic_state()
    ioctl(kv.fd, K.KVM_GET_LAPIC, lapic)
    regs = bytes(lapic.regs)
    svr = int.from_bytes(regs[0xF0:0xF4], "little")
    dcr = int.from_bytes(regs[0x3E0:0x3E4], "little")
    shift = ((dcr & 3) | ((dcr & 8) >> 1)) + 1 & 7
    base = msrs[MSR_APIC_BASE]
    disabled = (0 if svr & 0x100 else S.VLAPIC_SW_DISABLED) | (
        0 if base & 0x800 else S.VLAPIC_HW_DISABLED)
    recs.append(HvmRecord(S.HVM_SAVE_LAPIC, vid, bytes(S.hvm_hw_lapic(
        apic_base_msr=base, disabled=disabled, timer_divisor=1 << shift,
        tdt_msr=msrs[MSR_TSC_DEADLINE]))))
    recs.append(HvmRecord(S.HVM_SAVE_LAPIC_REGS, vid, regs))
    m = S.hvm_hw_mtrr(msr_pat_cr=msrs[MSR_PAT], msr_mtrr_cap=msrs[MSR_MTRRCAP],
                      msr_mtrr_def_type=msrs[MSR_MTRR_DEF_TYPE])
    for i, idx in enumerate(MSR_MTRR_VAR):
        m.msr_mtrr_var[i] = msrs[idx]
    for i, idx in enumerate(MSR_MTRR_FIXED):
        m.msr_mtrr_fixed[i] = msrs[idx]
    recs.append(HvmRecord(S.HVM_SAVE_MTRR, vid, bytes(m)))
    recs.append(HvmRecord(S.HVM_SAVE_TSC_ADJUST, vid,
                          bytes(S.hvm_tsc_adjust(msrs[MSR_TSC_ADJUST]))))
    return recs


def _supported_xcr0(cpuid: list[K.kvm_cpuid_entry2]) -> int:
    for e in cpuid:
        if e.function == 0xD and e.index == 0:
            return e.eax | e.edx << 32
    return XSTATE_FP_SSE


# --- load ------------------------------------------------------------------------------------

def load_vcpu(kv: Vcpu, recs: dict[int, bytes]) -> bool:
    """Load vCPU state from its records (type code -> data); True if it had a CPU record
    (it is then runnable, else it stays down). Order matters to KVM: APIC base before the
    LAPIC page, sregs (EFER, CR0) before MSRs that depend on long mode, TSC last."""
    msrs: dict[int, int] = {}
    cpu = S.hvm_hw_cpu.from_buffer_copy(recs[S.HVM_SAVE_CPU]) \
        if S.HVM_SAVE_CPU in recs else None
    lapic = S.hvm_hw_lapic.from_buffer_copy(recs[S.HVM_SAVE_LAPIC]) \
        if S.HVM_SAVE_LAPIC in recs else None
    if cpu is not None:
        s = kv.get_sregs()
        for xen, kvm in _SEGS:
            setattr(s, kvm, seg_from(getattr(cpu, f"{xen}_sel"), getattr(cpu, f"{xen}_base"),
                                     getattr(cpu, f"{xen}_limit"),
                                     getattr(cpu, f"{xen}_arbytes")))
        s.idt.limit, s.idt.base = cpu.idtr_limit, cpu.idtr_base
        s.gdt.limit, s.gdt.base = cpu.gdtr_limit, cpu.gdtr_base
        s.cr0, s.cr2, s.cr3, s.cr4, s.efer = cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.msr_efer
        if lapic is not None:
            s.apic_base = lapic.apic_base_msr
            regs = S.hvm_hw_lapic_regs.from_buffer_copy(recs[S.HVM_SAVE_LAPIC_REGS]) \
                if S.HVM_SAVE_LAPIC_REGS in recs else None
            if regs is not None:
                s.cr8 = regs.data[0x80] >> 4
        for i in range(4):
            s.interrupt_bitmap[i] = 0
        kv.set_sregs(s)
        r = K.kvm_regs()
        for n in ("rax", "rbx", "rcx", "rdx", "rbp", "rsi", "rdi", "rsp", "r8", "r9", "r10",
                  "r11", "r12", "r13", "r14", "r15", "rip", "rflags"):
            setattr(r, n, getattr(cpu, n))
        kv.set_regs(r)
        dr = kvm_debugregs()
        dr.db[0], dr.db[1], dr.db[2], dr.db[3] = cpu.dr0, cpu.dr1, cpu.dr2, cpu.dr3
        dr.dr6, dr.dr7 = cpu.dr6 or 0xFFFF0FF0, cpu.dr7 or 0x400
        try:
            ioctl(kv.fd, KVM_SET_DEBUGREGS, dr)
        except KvmError:
            pass
        for field, idx in _CPU_MSRS.items():
            if idx != MSR_TSC:
                msrs[idx] = getattr(cpu, field)
    elif lapic is not None:
        msrs[MSR_APIC_BASE] = lapic.apic_base_msr
    xs = K.kvm_xsave()
    if S.CPU_XSAVE_CODE in recs:
        blob = recs[S.CPU_XSAVE_CODE]
        hdr = S.hvm_hw_cpu_xsave.from_buffer_copy(blob[:ctypes.sizeof(S.hvm_hw_cpu_xsave)])
        area = blob[24:]
        ctypes.memmove(ctypes.addressof(xs), area, min(len(area), ctypes.sizeof(xs)))
        if hdr.xcr0:
            x = K.kvm_xcrs(nr_xcrs=1)
            x.xcrs[0].xcr, x.xcrs[0].value = 0, hdr.xcr0
            try:
                ioctl(kv.fd, K.KVM_SET_XCRS, x)
            except KvmError:
                pass
    elif cpu is not None:
        ctypes.memmove(ctypes.addressof(xs), bytes(cpu.fpu_regs), 512)
        ctypes.memmove(ctypes.addressof(xs) + XSAVE_HDR, XSTATE_FP_SSE.to_bytes(8, "little"), 8)
    if S.CPU_XSAVE_CODE in recs or cpu is not None:
        ioctl(kv.fd, K.KVM_SET_XSAVE, xs)
    if S.HVM_SAVE_MTRR in recs:
        m = S.hvm_hw_mtrr.from_buffer_copy(recs[S.HVM_SAVE_MTRR])
        msrs[MSR_PAT] = m.msr_pat_cr
        msrs[MSR_MTRR_DEF_TYPE] = m.msr_mtrr_def_type
        for i, idx in enumerate(MSR_MTRR_VAR):
            msrs[idx] = m.msr_mtrr_var[i]
        for i, idx in enumerate(MSR_MTRR_FIXED):
            msrs[idx] = m.msr_mtrr_fixed[i]
    if S.HVM_SAVE_TSC_ADJUST in recs:
        msrs[MSR_TSC_ADJUST] = S.hvm_tsc_adjust.from_buffer_copy(
            recs[S.HVM_SAVE_TSC_ADJUST]).tsc_adjust
    set_msrs(kv, {k: v for k, v in msrs.items() if v or k not in (MSR_TSC_AUX,)})
    if S.HVM_SAVE_LAPIC_REGS in recs:
        ls = K.kvm_lapic_state()
        ctypes.memmove(ls.regs, recs[S.HVM_SAVE_LAPIC_REGS], 1024)
        ioctl(kv.fd, K.KVM_SET_LAPIC, ls)
        if lapic is not None and lapic.tdt_msr:
            set_msrs(kv, {MSR_TSC_DEADLINE: lapic.tdt_msr})
    if cpu is not None:
        ev = K.kvm_vcpu_events()
        ioctl(kv.fd, K.KVM_GET_VCPU_EVENTS, ev)
        ev.exception.injected = ev.exception.pending = 0
        ev.interrupt.injected = 0
        ev.nmi.injected = 0
        pe = cpu.pending_event
        if pe & EV_VALID:
            vec, kind = pe & 0xFF, (pe >> 8) & 7
            if kind in (EV_HW_EXCEPTION, 5, 6):
                ev.exception.injected, ev.exception.nr = 1, vec
                ev.exception.has_error_code = (pe >> 11) & 1
                ev.exception.error_code = cpu.error_code
            elif kind == EV_NMI:
                ev.nmi.injected = 1
            else:
                ev.interrupt.injected, ev.interrupt.nr = 1, vec
                ev.interrupt.soft = int(kind == EV_SW_INTERRUPT)
        ev.flags = 0
        try:
            ioctl(kv.fd, K.KVM_SET_VCPU_EVENTS, ev)
        except KvmError as e:
            if e.errno != errno.EINVAL:
                raise
        kv.set_mp_state(K.KVM_MP_STATE_RUNNABLE)
    return cpu is not None


def set_tsc(kv: Vcpu, value: int) -> None:
    set_msrs(kv, {MSR_TSC: value})
