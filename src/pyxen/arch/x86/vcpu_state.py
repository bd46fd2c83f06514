"""Register state a vCPU starts with: Xen's PVH boot ABI, and VCPUOP_initialise contexts."""

from __future__ import annotations

from ...hypervisor.public.hvm_vcpu import VCPU_HVM_MODE_64B, vcpu_hvm_context
from .kvm_abi import kvm_regs, kvm_segment, kvm_sregs

CR0_PE, CR0_ET = 1, 1 << 4
CODE32_AR = 0xC9B  # present, DPL 0, code read/exec accessed, 32-bit, 4K granularity
DATA32_AR = 0xC93
CODE64_AR = 0xA9B
TSS32_BUSY_AR = 0x8B


def segment(selector: int, ar: int, base: int = 0, limit: int = 0xFFFFFFFF) -> kvm_segment:
    """A KVM segment from Xen's _ar encoding (docs in xen/hvm/hvm_vcpu.h)."""
    return kvm_segment(base=base, limit=limit, selector=selector, type=ar & 0xF,
                       s=(ar >> 4) & 1, dpl=(ar >> 5) & 3, present=(ar >> 7) & 1,
                       avl=(ar >> 8) & 1, l=(ar >> 9) & 1, db=(ar >> 10) & 1,
                       g=(ar >> 11) & 1, unusable=0 if ar & 0x80 else 1)


def _flat(s: kvm_sregs, cs_ar: int, ds_ar: int) -> None:
    s.cs = segment(0x08, cs_ar)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, name, segment(0x10, ds_ar))
    s.tr = segment(0x18, TSS32_BUSY_AR, limit=0x67)
    s.ldt = segment(0, 0x82, limit=0xFFFF)


def pvh_boot_state(sregs: kvm_sregs, entry: int, start_info: int) -> tuple[kvm_regs, kvm_sregs]:
    """docs/misc/pvh.pandoc: 32-bit protected mode, paging off, flat CS/DS/ES/SS, TR a busy
    32-bit TSS (base 0, limit 0x67), EFLAGS.IF/TF/VM clear, %ebx = hvm_start_info."""
    _flat(sregs, CODE32_AR, DATA32_AR)
    sregs.cr0 = CR0_PE | CR0_ET
    sregs.cr3 = sregs.cr4 = sregs.efer = 0
    sregs.gdt.base = sregs.idt.base = 0
    sregs.gdt.limit = sregs.idt.limit = 0
    regs = kvm_regs(rip=entry, rbx=start_info, rflags=0x2)
    return regs, sregs


def hvm_context_state(sregs: kvm_sregs, c: vcpu_hvm_context) -> tuple[kvm_regs, kvm_sregs]:
    """VCPUOP_initialise for HVM/PVH (struct vcpu_hvm_context), as Xen's
    arch_set_info_hvm_guest loads it."""
    if c.mode == VCPU_HVM_MODE_64B:
        r = c.cpu_regs.x86_64
        _flat(sregs, CODE64_AR, DATA32_AR)
        sregs.cr0, sregs.cr3, sregs.cr4 = r.cr0, r.cr3, r.cr4
        sregs.efer = r.efer | (1 << 10)  # LMA follows LME with paging on
        regs = kvm_regs(rax=r.rax, rcx=r.rcx, rdx=r.rdx, rbx=r.rbx, rsp=r.rsp, rbp=r.rbp,
                        rsi=r.rsi, rdi=r.rdi, rip=r.rip, rflags=r.rflags | 2)
        return regs, sregs
    r32 = c.cpu_regs.x86_32
    sregs.cs = segment(0x08, r32.cs_ar, r32.cs_base, r32.cs_limit)
    for name, ar, base, limit in (("ds", r32.ds_ar, r32.ds_base, r32.ds_limit),
                                  ("es", r32.es_ar, r32.es_base, r32.es_limit),
                                  ("ss", r32.ss_ar, r32.ss_base, r32.ss_limit)):
        setattr(sregs, name, segment(0x10, ar, base, limit))
    sregs.fs = segment(0x10, r32.ds_ar, r32.ds_base, r32.ds_limit)
    sregs.gs = segment(0x10, r32.ds_ar, r32.ds_base, r32.ds_limit)
    sregs.tr = segment(0x18, r32.tr_ar or TSS32_BUSY_AR, r32.tr_base, r32.tr_limit or 0x67)
    sregs.ldt = segment(0, 0x82, limit=0xFFFF)
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = r32.cr0, r32.cr3, r32.cr4, r32.efer
    regs = kvm_regs(rax=r32.eax, rcx=r32.ecx, rdx=r32.edx, rbx=r32.ebx, rsp=r32.esp,
                    rbp=r32.ebp, rsi=r32.esi, rdi=r32.edi, rip=r32.eip,
                    rflags=r32.eflags | 2)
    return regs, sregs
