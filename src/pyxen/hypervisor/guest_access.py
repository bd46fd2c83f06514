"""The one way hypercall handlers touch guest memory (Xen's copy_{to,from}_guest).

Every guest pointer is translated through the guest's page tables and bounds-checked
against guest RAM page by page; anything the guest could not itself access raises
GuestFault, which the dispatcher turns into -EFAULT for that hypercall.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .public import layout_for

if TYPE_CHECKING:
    from .memory import GuestMemory

T = TypeVar("T", bound=ctypes.Structure)

PAGE_SIZE = 4096
MAX_COPY = 1 << 20  # no single copy is bigger than this; larger requests are chunked


class GuestFault(Exception):
    """A guest address the guest could not access: -EFAULT."""

    def __init__(self, addr: int) -> None:
        super().__init__(f"bad guest address {addr:#x}")
        self.addr = addr


class GuestAccess:
    """Guest-virtual accessor for one hypercall: `translate(va, write) -> gpa`."""

    def __init__(self, memory: GuestMemory, translate: Callable[[int, bool], int],
                 compat: bool = False) -> None:
        self.memory = memory
        self._walk = translate
        # A 32-bit caller: structs are read and written with their x86_32 twins, and
        # xen_ulong_t / xen_pfn_t arrays have 4-byte elements.
        self.compat = compat
        self.word_size = 4 if compat else 8
        # Translations made during this hypercall, by (page, write): a handler often reads
        # a struct and then the array it points to in the same page. Never kept across
        # hypercalls (the guest may change its page tables between them).
        self._pages: dict[tuple[int, bool], int] = {}

    def _translate(self, va: int, write: bool) -> int:
        key = (va >> 12, write)
        base = self._pages.get(key)
        if base is None:
            try:
                base = self._walk(va & ~(PAGE_SIZE - 1), write)
            except GuestFault:
                raise GuestFault(va) from None
            self._pages[key] = base
            if write:
                self._pages[(va >> 12, False)] = base  # writable implies readable
        return base | (va & (PAGE_SIZE - 1))

    def _pieces(self, va: int, n: int, write: bool):
        if n < 0 or n > MAX_COPY or va < 0 or va + n > 1 << 64:
            raise GuestFault(va)
        while n:
            chunk = min(n, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            yield self._translate(va, write), chunk
            va += chunk
            n -= chunk

    def read(self, va: int, n: int) -> bytes:
        if 0 < n <= PAGE_SIZE - (va & (PAGE_SIZE - 1)) and 0 <= va < (1 << 64) - n:
            return self.memory.read(self._translate(va, False), n)  # within one page
        return b"".join(self.memory.read(gpa, c) for gpa, c in self._pieces(va, n, False))

    def write(self, va: int, data: bytes) -> None:
        pieces = list(self._pieces(va, len(data), True))  # all-or-nothing
        off = 0
        for gpa, c in pieces:
            self.memory.write(gpa, data[off:off + c])
            off += c

    def read_struct(self, va: int, cls: type[T]) -> T:
        """Read `cls` as this caller lays it out (its compat twin for a 32-bit caller)."""
        if self.compat:
            cls = layout_for(cls, True)
        return cls.from_buffer_copy(self.read(va, ctypes.sizeof(cls)))

    def sizeof(self, cls: type) -> int:
        """sizeof(cls) in this caller's ABI (array strides of struct arguments)."""
        return ctypes.sizeof(layout_for(cls, self.compat))

    def new_struct(self, cls: type[T], **fields: int) -> T:
        """An instance of `cls` in this caller's layout (for results written back)."""
        return layout_for(cls, self.compat)(**fields)

    def read_words(self, va: int, n: int) -> list[int]:
        """An array of n xen_ulong_t / xen_pfn_t (4 or 8 bytes each, by caller ABI)."""
        w = self.word_size
        data = self.read(va, n * w)
        return [int.from_bytes(data[i:i + w], "little") for i in range(0, n * w, w)]

    def write_words(self, va: int, values: list[int]) -> None:
        w, mask = self.word_size, (1 << (8 * self.word_size)) - 1
        self.write(va, b"".join((v & mask).to_bytes(w, "little") for v in values))

    def write_struct(self, va: int, obj: ctypes.Structure) -> None:
        self.write(va, bytes(obj))

    def read_u16(self, va: int) -> int:
        return int.from_bytes(self.read(va, 2), "little")

