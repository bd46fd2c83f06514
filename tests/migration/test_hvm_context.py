"""Xen's HVM context from and to KVM (arch/x86/vcpu_save.py, hypervisor/hvm_save.py):
a vCPU's state saved from one KVM VM, loaded into another and saved again is the same
record for record; malformed contexts are refused naming the record."""

from __future__ import annotations

import ctypes
import os
import re

import pytest

from pyxen.arch.x86 import kvm_abi as K
from pyxen.arch.x86.cpuid import guest_cpuid
from pyxen.arch.x86.kvm import Kvm, ioctl
from pyxen.arch.x86.vcpu_save import get_msrs, load_vcpu, save_vcpu, set_msrs
from pyxen.arch.x86.vcpu_state import segment
from pyxen.hypervisor import hvm_save
from pyxen.hypervisor.public import hvm_save as S

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm")

MSRS = {0xC0000081: 0x0023001000000000, 0xC0000082: 0xFFFFFFFF81000000,
        0xC0000084: 0x47700, 0xC0000102: 0xFFFF888000001000, 0x174: 0x10,
        0x175: 0xFFFF888000002000, 0x176: 0xFFFFFFFF81000100, 0x277: 0x0007040600070406}


def new_vcpu(kvm: Kvm):  # noqa: ANN201
    from pyxen.arch.x86.kvm import Vm
    vm = Vm(kvm)
    vm.set_tss_addr(0xFFFBD000)
    vm.create_irqchip()
    v = vm.create_vcpu(0)
    v.set_cpuid(guest_cpuid(kvm.supported_cpuid(), 0, 1, v.tsc_khz()))
    return vm, v


def by_type(recs: list[hvm_save.HvmRecord]) -> dict[int, bytes]:
    return {r.typecode: r.data for r in recs}


def test_vcpu_state_round_trip() -> None:
    kvm = Kvm()
    cpuid = kvm.supported_cpuid()
    vm, v = new_vcpu(kvm)
    s = v.get_sregs()
    s.cs = segment(0x10, 0xA9B)
    for name in ("ds", "es", "ss"):
        setattr(s, name, segment(0x18, 0xC93))
    s.fs = segment(0, 0xC93, base=0x7F0000001000)
    s.gs = segment(0, 0xC93, base=0xFFFF888000003000)
    s.tr = segment(0x40, 0x8B, base=0xFFFFFE0000001000, limit=0x4087)
    s.gdt.base, s.gdt.limit = 0xFFFFFE0000000000, 0x7F
    s.idt.base, s.idt.limit = 0xFFFFFE0000002000, 0xFFF
    s.cr0, s.cr3, s.cr4 = 0x80050033, 0x1234000, 0x3006A0
    s.efer = 0xD01
    s.cr2 = 0xDEADB000
    v.set_sregs(s)
    r = K.kvm_regs(rax=1, rbx=2, rcx=3, rdx=4, rsi=5, rdi=6, rsp=0xFFFFC90000004000,
                   rbp=8, r8=9, r15=15, rip=0xFFFFFFFF81001234, rflags=0x246)
    v.set_regs(r)
    assert set_msrs(v, MSRS) == []
    xs = K.kvm_xsave()
    ioctl(v.fd, K.KVM_GET_XSAVE, xs)
    raw = (ctypes.c_uint8 * 4096).from_buffer(xs)
    raw[24:28] = (0x1F80 | 0x40).to_bytes(4, "little")  # MXCSR (DAZ)
    raw[160:176] = bytes(range(16))  # XMM0
    raw[512] |= 2  # XSTATE_BV: SSE
    ioctl(v.fd, K.KVM_SET_XSAVE, xs)
    ev = K.kvm_vcpu_events()
    ioctl(v.fd, K.KVM_GET_VCPU_EVENTS, ev)
    ev.interrupt.injected, ev.interrupt.nr = 1, 0xF3
    ev.flags = 0
    ioctl(v.fd, K.KVM_SET_VCPU_EVENTS, ev)
    first = save_vcpu(v, 0, True, cpuid)
    recs1 = by_type(first)
    cpu1 = S.hvm_hw_cpu.from_buffer_copy(recs1[S.HVM_SAVE_CPU])
    assert cpu1.rip == r.rip and cpu1.rsp == r.rsp and cpu1.cr3 == 0x1234000
    assert cpu1.msr_lstar == MSRS[0xC0000082] and cpu1.shadow_gs == MSRS[0xC0000102]
    assert cpu1.fs_base == 0x7F0000001000 and cpu1.cs_arbytes == 0xA9B
    assert cpu1.pending_event == 0xF3 | 1 << 31
    assert int.from_bytes(bytes(cpu1.fpu_regs)[24:28], "little") & 0x40
    blob = hvm_save.pack([hvm_save.header(0, 1000000), *first])
    parsed = hvm_save.unpack(blob, 1)
    assert [(x.typecode, x.data) for x in parsed[1:]] == [(x.typecode, x.data) for x in first]

    vm2, v2 = new_vcpu(kvm)
    assert load_vcpu(v2, recs1) is True
    second = by_type(save_vcpu(v2, 0, True, cpuid))
    cpu2 = S.hvm_hw_cpu.from_buffer_copy(second[S.HVM_SAVE_CPU])
    cpu1.tsc = cpu2.tsc = 0  # the TSC moves on (restore sets it separately)
    assert bytes(cpu2) == bytes(cpu1)
    for code in (S.CPU_XSAVE_CODE, S.HVM_SAVE_MTRR, S.HVM_SAVE_LAPIC, S.HVM_SAVE_TSC_ADJUST):
        assert second[code] == recs1[code], S.HVM_SAVE_NAMES[code]
    regs1, regs2 = bytearray(recs1[S.HVM_SAVE_LAPIC_REGS]), bytearray(
        second[S.HVM_SAVE_LAPIC_REGS])
    regs1[0x390:0x394] = regs2[0x390:0x394] = bytes(4)  # the timer's current count
    assert regs1 == regs2
    assert get_msrs(v2, list(MSRS)) == MSRS
    for x in (v, v2):
        x.close()
    vm.close()
    vm2.close()


def test_32_bit_protected_mode_vcpu_round_trip() -> None:
    """A 32-bit PVH vCPU (guests/start32.S: protected mode, paging off, flat 32-bit
    segments, no long mode): the CPU record carries CR0.PE without PG, EFER without
    LME/LMA, D/B set and L clear in CS, and it loads back into KVM as the same vCPU."""
    kvm = Kvm()
    cpuid = kvm.supported_cpuid()
    vm, v = new_vcpu(kvm)
    s = v.get_sregs()
    s.cs = segment(0x08, 0xC9B)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, name, segment(0x10, 0xC93))
    s.tr = segment(0x18, 0x8B, limit=0x67)
    s.ldt = segment(0, 0x82, limit=0xFFFF)
    s.gdt.base, s.gdt.limit = 0x1000, 0x1F
    s.cr0, s.cr3, s.cr4, s.efer = 0x11, 0, 0, 0
    v.set_sregs(s)
    r = K.kvm_regs(rax=0, rbx=0x10A000, rcx=7, rsp=0x10BFF0, rip=0x1043A7, rflags=0x2)
    v.set_regs(r)
    recs1 = by_type(save_vcpu(v, 0, True, cpuid))
    cpu1 = S.hvm_hw_cpu.from_buffer_copy(recs1[S.HVM_SAVE_CPU])
    assert (cpu1.rip, cpu1.rsp, cpu1.rbx) == (0x1043A7, 0x10BFF0, 0x10A000)
    assert cpu1.cr0 & 0x80000001 == 1 and cpu1.cr4 == 0 and cpu1.msr_efer & 0x500 == 0
    assert cpu1.cs_arbytes == 0xC9B and cpu1.cs_limit == 0xFFFFFFFF and cpu1.cs_base == 0
    assert cpu1.ss_arbytes == cpu1.ds_arbytes == 0xC93 and cpu1.ss_sel == 0x10
    assert cpu1.tr_arbytes == 0x8B and cpu1.tr_limit == 0x67

    vm2, v2 = new_vcpu(kvm)
    assert load_vcpu(v2, recs1) is True
    s2 = v2.get_sregs()
    assert (s2.cs.db, s2.cs.l, s2.cs.g, s2.cs.selector) == (1, 0, 1, 0x08)
    assert s2.efer & 0x500 == 0 and s2.cr0 & 0x80000001 == 1
    cpu2 = S.hvm_hw_cpu.from_buffer_copy(by_type(save_vcpu(v2, 0, True, cpuid))[
        S.HVM_SAVE_CPU])
    cpu1.tsc = cpu2.tsc = 0
    assert bytes(cpu2) == bytes(cpu1)
    for x in (v, v2):
        x.close()
    vm.close()
    vm2.close()


def test_malformed_contexts_name_the_record() -> None:
    hdr = hvm_save.header(0, 1000)
    good = hvm_save.pack([hdr])
    assert hvm_save.unpack(good, 1) == [hdr]
    cases = {
        good[:-8]: "truncated descriptor",
        hvm_save.pack([hvm_save.HvmRecord(S.HVM_SAVE_CPU, 0, bytes(1024))]):
            "does not start with HEADER",
        hvm_save.pack([hdr, hvm_save.HvmRecord(S.HVM_SAVE_CPU, 0, bytes(10))]):
            "record 1 (CPU): length 10",
        hvm_save.pack([hdr, hvm_save.HvmRecord(S.HVM_SAVE_LAPIC, 3, bytes(24))]):
            "record 1 (LAPIC): instance 3",
        hvm_save.pack([hdr, hvm_save.HvmRecord(3, 0, bytes(8))]):
            "record 1 (PIC): not a record",
        hvm_save.pack([hvm_save.HvmRecord(S.HVM_SAVE_HEADER, 0, bytes(24))]):
            "magic 0x0",
        good + b"x": "1 bytes after",
    }
    for blob, what in cases.items():
        with pytest.raises(hvm_save.HvmContextError, match=re.escape(what)):
            hvm_save.unpack(blob, 1)
