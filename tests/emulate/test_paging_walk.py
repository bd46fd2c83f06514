"""paging.walk, the page-table walk emulate.py maps guest memory with: permissions of the
whole path, large pages, not-present and reserved-bit faults (pure logic, a fake RAM)."""

from __future__ import annotations

import struct

import pytest

from pyxen.arch.x86.paging import (
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_NXE,
    NotPresent,
    PagingState,
    walk,
)

P, RW, US, PS, NX = 1, 2, 4, 0x80, 1 << 63


class Ram:
    def __init__(self) -> None:
        self.mem = bytearray(64 * 4096)

    def set(self, addr: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, addr, value)

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.mem[addr:addr + n])


def long_mode(ram: Ram, nxe: bool = True) -> PagingState:
    # PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000
    ram.set(0x1000, 0x2000 | P | RW | US)
    ram.set(0x2000, 0x3000 | P | RW | US)
    ram.set(0x3000, 0x4000 | P | RW)            # supervisor-only from here
    ram.set(0x3000 + 8, 0x200000 | P | PS | US)  # 2 MiB page at 2 MiB, read-only, user
    ram.set(0x4000 + 5 * 8, 0x9000 | P | RW | US | NX)
    return PagingState(CR0_PE | CR0_PG, 0x1000, CR4_PAE, EFER_LMA | (EFER_NXE if nxe else 0))


def test_4k_page_combines_the_path() -> None:
    ram = Ram()
    m = walk(ram.read, long_mode(ram), 0x5123)
    assert m.gpa == 0x9123
    assert (m.writable, m.user, m.executable) == (True, False, False)  # PD not US; NX
    assert m.entries == (0x1000, 0x2000, 0x3000, 0x4000 + 5 * 8)


def test_2m_page() -> None:
    ram = Ram()
    m = walk(ram.read, long_mode(ram), 0x2ABCDE)
    assert m.gpa == 0x2ABCDE and (m.writable, m.user, m.executable) == (False, True, True)


def test_not_present_and_reserved_nx() -> None:
    ram = Ram()
    st = long_mode(ram)
    with pytest.raises(NotPresent) as e:
        walk(ram.read, st, 0x6000)
    assert not e.value.reserved
    with pytest.raises(NotPresent) as e:  # NX set while EFER.NXE is clear: reserved bit
        walk(ram.read, long_mode(ram, nxe=False), 0x5000)
    assert e.value.reserved


def test_paging_off_is_identity() -> None:
    m = walk(Ram().read, PagingState(CR0_PE, 0, 0, 0), 0x12345678)
    assert m.gpa == 0x12345678 and m.writable and m.executable
