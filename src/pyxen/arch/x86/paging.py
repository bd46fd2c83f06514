"""Guest-virtual to guest-physical translation by walking the guest's own page tables,
as Xen's copy_{to,from}_guest do for an HVM guest's pointers."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ...hypervisor.guest_access import GuestFault

CR0_PE = 1 << 0
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_PS = 1 << 7
ADDR_MASK = 0x000FFFFFFFFFF000


@dataclass(frozen=True)
class PagingState:
    cr0: int
    cr3: int
    cr4: int
    efer: int


def translate(read_phys: Callable[[int, int], bytes], st: PagingState, va: int,
              write: bool) -> int:
    """The guest-physical address of va; GuestFault if the guest could not access it."""

    def entry(table: int, idx: int, size: int = 8) -> int:
        raw = read_phys(table + idx * size, size)
        return struct.unpack("<Q" if size == 8 else "<I", raw)[0]

    def check(e: int) -> None:
        if not e & PTE_P:
            raise GuestFault(va)
        if write and not e & PTE_RW and st.cr0 & CR0_WP:
            raise GuestFault(va)

    if not st.cr0 & CR0_PG:
        return va & 0xFFFFFFFF
    if st.efer & EFER_LMA:
        levels = 5 if st.cr4 & CR4_LA57 else 4
        bits = 12 + 9 * levels
        top = va >> (bits - 1)
        if top not in (0, (1 << (64 - bits + 1)) - 1):
            raise GuestFault(va)  # non-canonical
        table = st.cr3 & ADDR_MASK
        for level in range(levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            e = entry(table, (va >> shift) & 511)
            check(e)
            if level in (2, 3) and e & PTE_PS:
                base = e & ADDR_MASK & ~((1 << shift) - 1)
                return base | (va & ((1 << shift) - 1))
            table = e & ADDR_MASK
        return table | (va & 0xFFF)
    va &= 0xFFFFFFFF
    if st.cr4 & CR4_PAE:
        pdpte = entry(st.cr3 & 0xFFFFFFE0, va >> 30)
        if not pdpte & PTE_P:
            raise GuestFault(va)
        pde = entry(pdpte & ADDR_MASK, (va >> 21) & 511)
        check(pde)
        if pde & PTE_PS:
            return (pde & ADDR_MASK & ~0x1FFFFF) | (va & 0x1FFFFF)
        pte = entry(pde & ADDR_MASK, (va >> 12) & 511)
        check(pte)
        return (pte & ADDR_MASK) | (va & 0xFFF)
    pde = entry(st.cr3 & 0xFFFFF000, va >> 22, 4)
    check(pde)
    if pde & PTE_PS and st.cr4 & CR4_PSE:
        return ((pde & 0xFFC00000) | ((pde & 0x1FE000) << 19)) | (va & 0x3FFFFF)
    pte = entry(pde & 0xFFFFF000, (va >> 12) & 1023, 4)
    check(pte)
    return (pte & 0xFFFFF000) | (va & 0xFFF)
