"""Log-dirty mode (vmm/dirtylog.py) on real /dev/kvm: pages a guest writes show up in the
next fetch, and only those; pyxen's own writes (GuestMemory.write, grant pages) too."""

from __future__ import annotations

import os

import pytest

from pyxen.arch.x86 import kvm_abi as K
from pyxen.arch.x86.kvm import Kvm, Vm
from pyxen.hypervisor.memory import GuestMemory
from pyxen.vmm.dirtylog import DirtyLog, bitmap_gfns

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm")


def test_bitmap_gfns() -> None:
    bm = bytearray(16)
    bm[0] = 0b1000_0001
    bm[9] = 0b0000_0100
    assert bitmap_gfns(bm, 0x100) == [0x100, 0x107, 0x100 + 64 + 8 + 2]
    assert bitmap_gfns(bytes(16), 0) == []


def store_byte(segment: int, value: int) -> bytes:
    """Real mode: mov ax, SEG; mov ds, ax; mov byte [0], VALUE."""
    return (bytes([0xB8]) + segment.to_bytes(2, "little") + bytes([0x8E, 0xD8])
            + bytes([0xC6, 0x06, 0, 0, value]))


def run_to_hlt(vcpu, rip: int) -> None:
    s = vcpu.get_sregs()
    s.cs.base, s.cs.selector = 0, 0
    vcpu.set_sregs(s)
    r = vcpu.get_regs()
    r.rip, r.rflags = rip, 2
    vcpu.set_regs(r)
    for _ in range(10):
        reason = vcpu.run()
        if reason == K.KVM_EXIT_HLT:
            return
        assert reason == K.KVM_EXIT_INTR, K.EXIT_NAMES.get(reason, reason)
    raise AssertionError("guest did not reach hlt")


def test_guest_writes_and_pyxen_writes_are_logged() -> None:
    kvm = Kvm()
    vm = Vm(kvm)
    mem = GuestMemory(4 << 20, name="pyxen-dirtylog-test")
    mem.p2m.attach(lambda slot, gpa, size, hva: vm.set_memory_region(slot, gpa, size,
                                                                      hva if size else 0), 32)
    first = store_byte(0x500, 0x11) + store_byte(0x900, 0x22) + store_byte(0x3F00, 0x33) + b"\xf4"
    second = store_byte(0x500, 0x44) + b"\xf4"
    mem.write(0x1000, first)
    mem.write(0x1800, second)
    vcpu = vm.create_vcpu(0)
    log = DirtyLog(vm, mem.p2m)
    mem.dirty = log
    try:
        log.enable()
        assert log.fetch() == []
        run_to_hlt(vcpu, 0x1000)
        mem.write(0x7FF0, b"x" * 32)  # pyxen's write spanning two pages
        assert log.fetch() == [0x5, 0x7, 0x8, 0x9, 0x3F]
        assert mem.read(0x3F000, 1) == b"\x33"
        # Re-armed: only what is written again shows up.
        run_to_hlt(vcpu, 0x1800)
        assert log.fetch() == [0x5]
        assert log.fetch() == []
        assert log.stats["pyxen_pages"] == 2
        log.disable()
        mem.write(0x9000, b"y")
        assert log.fetch() == []  # logging off: nothing recorded
    finally:
        mem.dirty = None
        vcpu.close()
        vm.close()
        kvm.close()
        mem.close()
