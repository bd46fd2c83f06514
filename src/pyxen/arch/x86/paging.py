"""Guest-virtual to guest-physical translation by walking the guest's own page tables,
as Xen's copy_{to,from}_guest do for an HVM guest's pointers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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


class PagingState(NamedTuple):
    """The control registers a walk depends on (a tuple: built on every hypercall that
    takes a pointer, where a frozen dataclass's __init__ measured several times slower)."""

    cr0: int
    cr3: int
    cr4: int
    efer: int


def translate(read_phys: Callable[[int, int], bytes], st: PagingState, va: int,
              write: bool) -> int:
    """The guest-physical address of va; GuestFault if the guest could not access it.

    On the path of every hypercall that takes a pointer: one loop, no closures, one
    read_phys per level."""
    cr0 = st.cr0
    if not cr0 & CR0_PG:
        return va & 0xFFFFFFFF
    wp = write and cr0 & CR0_WP  # a read-only entry faults only for writes under CR0.WP
    if st.efer & EFER_LMA:
        shift = 48 if st.cr4 & CR4_LA57 else 39  # of the top level
        top = va >> (shift + 8)
        if top and top != (1 << (56 - shift)) - 1:
            raise GuestFault(va)  # non-canonical
        table = st.cr3 & ADDR_MASK
        while True:
            e = int.from_bytes(read_phys(table + ((va >> shift) & 511) * 8, 8), "little")
            if not e & PTE_P or (wp and not e & PTE_RW):
                raise GuestFault(va)
            if shift == 12:
                return (e & ADDR_MASK) | (va & 0xFFF)
            if e & PTE_PS and shift <= 30:  # 1 GiB (PDPT) or 2 MiB (PD) page
                off = (1 << shift) - 1
                return (e & ADDR_MASK & ~off) | (va & off)
            table = e & ADDR_MASK
            shift -= 9
    va &= 0xFFFFFFFF
    if st.cr4 & CR4_PAE:
        pdpte = int.from_bytes(read_phys((st.cr3 & 0xFFFFFFE0) + (va >> 30) * 8, 8), "little")
        if not pdpte & PTE_P:
            raise GuestFault(va)
        pde = int.from_bytes(read_phys((pdpte & ADDR_MASK) + ((va >> 21) & 511) * 8, 8),
                             "little")
        if not pde & PTE_P or (wp and not pde & PTE_RW):
            raise GuestFault(va)
        if pde & PTE_PS:
            return (pde & ADDR_MASK & ~0x1FFFFF) | (va & 0x1FFFFF)
        pte = int.from_bytes(read_phys((pde & ADDR_MASK) + ((va >> 12) & 511) * 8, 8),
                             "little")
        if not pte & PTE_P or (wp and not pte & PTE_RW):
            raise GuestFault(va)
        return (pte & ADDR_MASK) | (va & 0xFFF)
    pde = int.from_bytes(read_phys((st.cr3 & 0xFFFFF000) + (va >> 22) * 4, 4), "little")
    if not pde & PTE_P or (wp and not pde & PTE_RW):
        raise GuestFault(va)
    if pde & PTE_PS and st.cr4 & CR4_PSE:
        return ((pde & 0xFFC00000) | ((pde & 0x1FE000) << 19)) | (va & 0x3FFFFF)
    pte = int.from_bytes(read_phys((pde & 0xFFFFF000) + ((va >> 12) & 1023) * 4, 4), "little")
    if not pte & PTE_P or (wp and not pte & PTE_RW):
        raise GuestFault(va)
    return (pte & 0xFFFFF000) | (va & 0xFFF)


# --- the full walk, for emulating an instruction (arch/x86/emulate.py) -------------------

PTE_US = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_NX = 1 << 63
EFER_NXE = 1 << 11


@dataclass(frozen=True)
class Mapping:
    """What the guest's page tables say about one linear address: where it is and what
    the combined entries allow (the CPU ANDs R/W and U/S over the levels, ORs NX)."""
    gpa: int
    writable: bool
    user: bool
    executable: bool
    entries: tuple[int, ...]  # guest-physical addresses of the entries walked, top first


class NotPresent(GuestFault):
    """No translation: a not-present entry (#PF with P=0) or, with reserved=True, a set
    reserved bit (#PF with P=1, RSVD=1)."""

    def __init__(self, va: int, reserved: bool = False) -> None:
        super().__init__(va)
        self.reserved = reserved


def walk(read_phys: Callable[[int, int], bytes], st: PagingState, va: int) -> Mapping:
    """The page-table walk the CPU does for va (already canonical in long mode), with the
    permissions of the whole path. Raises NotPresent."""
    if not st.cr0 & CR0_PG:
        return Mapping(va & 0xFFFFFFFF, True, True, True, ())
    nxe = bool(st.efer & EFER_NXE)
    rw = us = True
    nx = False
    entries: list[int] = []

    def entry(addr: int, size: int) -> int:
        nonlocal rw, us, nx
        e = int.from_bytes(read_phys(addr, size), "little")
        entries.append(addr)
        if not e & PTE_P:
            raise NotPresent(va)
        if size == 8 and e & PTE_NX:
            if not nxe:
                raise NotPresent(va, reserved=True)
            nx = True
        rw = rw and bool(e & PTE_RW)
        us = us and bool(e & PTE_US)
        return e

    def done(gpa: int) -> Mapping:
        return Mapping(gpa, rw, us, not nx, tuple(entries))

    if st.efer & EFER_LMA:
        shift = 48 if st.cr4 & CR4_LA57 else 39
        table = st.cr3 & ADDR_MASK
        while True:
            e = entry(table + ((va >> shift) & 511) * 8, 8)
            if shift == 12:
                return done((e & ADDR_MASK) | (va & 0xFFF))
            if e & PTE_PS and shift <= 30:
                off = (1 << shift) - 1
                return done((e & ADDR_MASK & ~off) | (va & off))
            table = e & ADDR_MASK
            shift -= 9
    va &= 0xFFFFFFFF
    if st.cr4 & CR4_PAE:
        pdpte = int.from_bytes(read_phys((st.cr3 & 0xFFFFFFE0) + (va >> 30) * 8, 8), "little")
        if not pdpte & PTE_P:
            raise NotPresent(va)  # PDPTEs carry no permission bits
        pde = entry((pdpte & ADDR_MASK) + ((va >> 21) & 511) * 8, 8)
        if pde & PTE_PS:
            return done((pde & ADDR_MASK & ~0x1FFFFF) | (va & 0x1FFFFF))
        pte = entry((pde & ADDR_MASK) + ((va >> 12) & 511) * 8, 8)
        return done((pte & ADDR_MASK) | (va & 0xFFF))
    pde = entry((st.cr3 & 0xFFFFF000) + (va >> 22) * 4, 4)
    if pde & PTE_PS and st.cr4 & CR4_PSE:
        return done(((pde & 0xFFC00000) | ((pde & 0x1FE000) << 19)) | (va & 0x3FFFFF))
    pte = entry((pde & 0xFFFFF000) + ((va >> 12) & 1023) * 4, 4)
    return done((pte & 0xFFFFF000) | (va & 0xFFF))
