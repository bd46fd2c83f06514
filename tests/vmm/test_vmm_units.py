"""Pure logic of the VMM checked in isolation: page walks, hypercall stubs, time scale."""

from __future__ import annotations

import struct

import pytest

from pyxen.arch.x86.hypercall_page import HYPERCALL_PORT, hypercall_page, stub
from pyxen.arch.x86.paging import PagingState, translate
from pyxen.hypervisor.guest_access import GuestFault
from pyxen.hypervisor.shared_info import time_scale


class FakeRam:
    def __init__(self) -> None:
        self.mem = bytearray(1 << 20)

    def read(self, gpa: int, n: int) -> bytes:
        if gpa + n > len(self.mem):
            raise GuestFault(gpa)
        return bytes(self.mem[gpa:gpa + n])

    def q(self, gpa: int, v: int) -> None:
        struct.pack_into("<Q", self.mem, gpa, v)

    def d(self, gpa: int, v: int) -> None:
        struct.pack_into("<I", self.mem, gpa, v)


def test_long_mode_walk_4k_2m_and_faults() -> None:
    ram = FakeRam()
    ram.q(0x1000, 0x2000 | 3)                       # PML4[0] -> PDPT
    ram.q(0x2000, 0x3000 | 3)                       # PDPT[0] -> PD
    ram.q(0x3000, 0x200000 | 0x83)                  # PD[0]: 2 MiB page at 2 MiB
    ram.q(0x3008, 0x4000 | 1)                       # PD[1] -> PT, read-only
    ram.q(0x4000 + 5 * 8, 0x7000 | 1)               # PT[5]: 4 KiB at 0x7000, read-only
    st = PagingState(cr0=0x80010011, cr3=0x1000, cr4=0x20, efer=0x500)
    assert translate(ram.read, st, 0x12345, False) == 0x212345
    assert translate(ram.read, st, 0x205123, False) == 0x7123
    with pytest.raises(GuestFault):
        translate(ram.read, st, 0x205123, True)     # CR0.WP and a read-only page
    with pytest.raises(GuestFault):
        translate(ram.read, st, 0x206000, False)    # not present
    with pytest.raises(GuestFault):
        translate(ram.read, st, 0x0000800000000000, False)  # non-canonical


def test_32bit_walks() -> None:
    ram = FakeRam()
    assert translate(ram.read, PagingState(0x11, 0, 0, 0), 0x1234, False) == 0x1234
    ram.d(0x1000, 0x00400000 | 0x83)                 # PDE[0]: 4 MiB page (PSE)
    st = PagingState(cr0=0x80000011, cr3=0x1000, cr4=0x10, efer=0)
    assert translate(ram.read, st, 0x3456, True) == 0x403456
    ram.q(0x2000, 0x3000 | 1)                        # PAE: PDPTE[0] -> PD
    ram.q(0x3000, 0x600000 | 0x83)                   # PD[0]: 2 MiB page
    st = PagingState(cr0=0x80000011, cr3=0x2000, cr4=0x20, efer=0)
    assert translate(ram.read, st, 0x1234, False) == 0x601234


def test_hypercall_stub_format() -> None:
    assert stub(17) == bytes([0xB8, 17, 0, 0, 0, 0xE7, HYPERCALL_PORT, 0xC3]) + b"\xcc" * 24
    assert stub(23)[:2] == b"\x0f\x0b"               # __HYPERVISOR_iret: ud2
    page = hypercall_page()
    assert len(page) == 4096 and page[29 * 32:30 * 32] == stub(29)


@pytest.mark.parametrize("khz", [1_000_000, 2_100_000, 2_999_999, 3_700_123])
def test_time_scale_converts_one_second(khz: int) -> None:
    mul, shift = time_scale(khz)
    ticks = khz * 1000
    ns = ((ticks << shift) if shift >= 0 else (ticks >> -shift)) * mul >> 32
    assert abs(ns - 1_000_000_000) < 2000
    assert 0 < mul < 1 << 32
