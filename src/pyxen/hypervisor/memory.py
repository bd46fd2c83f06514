"""Guest physical memory: one memfd (shareable with backends and migration) mapped into the
VMM, laid out as RAM regions in the guest-physical address space."""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass

from .guest_access import GuestFault

PAGE_SIZE = 4096
LOWMEM_TOP = 0xF0000000  # HVM_BELOW_4G_RAM_END: MMIO hole up to 4 GiB
HIGHMEM_BASE = 1 << 32


@dataclass(frozen=True)
class Region:
    gpa: int
    size: int
    offset: int  # in the memfd
    e820_type: int = 1  # RAM; firmware ranges (ACPI tables: 3) are guest memory too


class GuestMemory:
    def __init__(self, size: int, name: str = "pyxen-ram",
                 firmware: tuple[tuple[int, int, int], ...] = ()) -> None:
        """size bytes of RAM; firmware: (gpa, size, E820 type) ranges in the MMIO hole
        (libxl's ACPI pages), backed by the same memfd after the RAM."""
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError("guest memory must be a positive number of pages")
        self.size = size
        total = size + sum(fsize for _, fsize, _ in firmware)
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, total)
        self.map = mmap.mmap(self.fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)
        self.hva = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        low = min(size, LOWMEM_TOP)
        self.regions = [Region(0, low, 0)]
        if size > low:
            self.regions.append(Region(HIGHMEM_BASE, size - low, low))
        offset = size
        for gpa, fsize, kind in firmware:
            if gpa < LOWMEM_TOP or gpa + fsize > HIGHMEM_BASE or gpa % PAGE_SIZE or \
                    fsize % PAGE_SIZE:
                raise ValueError(f"firmware range {gpa:#x}+{fsize:#x} is not whole pages "
                                 "in the MMIO hole")
            self.regions.append(Region(gpa, fsize, offset, kind))
            offset += fsize
        self.regions.sort(key=lambda r: r.gpa)
        self._low_end = low  # regions[0] is [0, low) at offset 0: read()'s fast case

    @property
    def max_gpfn(self) -> int:
        r = self.regions[-1]
        return (r.gpa + r.size) // PAGE_SIZE - 1

    def _offset(self, gpa: int, n: int) -> int:
        for r in self.regions:
            if r.gpa <= gpa and gpa + n <= r.gpa + r.size and n >= 0:
                return r.offset + gpa - r.gpa
        raise GuestFault(gpa)

    def is_ram(self, gpa: int, n: int = 1) -> bool:
        try:
            self._offset(gpa, n)
            return True
        except GuestFault:
            return False

    def read(self, gpa: int, n: int) -> bytes:
        if gpa >= 0 and n >= 0 and gpa + n <= self._low_end:  # the page walker's case
            return self.map[gpa:gpa + n]
        off = self._offset(gpa, n)
        return self.map[off:off + n]

    def write(self, gpa: int, data: bytes) -> None:
        off = self._offset(gpa, len(data))
        self.view[off:off + len(data)] = data

    def e820(self) -> list[tuple[int, int, int]]:
        """(addr, size, type) entries: RAM (type 1) and firmware ranges (ACPI: 3)."""
        return [(r.gpa, r.size, r.e820_type) for r in self.regions]
