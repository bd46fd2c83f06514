"""Guest physical memory: one memfd (the p2m's store, shareable with backends and migration)
mapped into the VMM, the p2m that says which page each gfn shows (hypervisor/p2m.py), the
domain's RAM accounting (tot_pages / max_pages) and its e820 as the toolstack set it."""

from __future__ import annotations

from dataclasses import dataclass

from .guest_access import GuestFault
from .p2m import P2M, PAGE_SHIFT, Page, Store, Window

PAGE_SIZE = 4096
LOWMEM_TOP = 0xF0000000  # HVM_BELOW_4G_RAM_END: MMIO hole up to 4 GiB
HIGHMEM_BASE = 1 << 32
DEFAULT_PHYS_BITS = 40  # when the CPU's MAXPHYADDR is not known (tests without KVM)

# libxc's HVM special pages (console, xenstore, ...): 8 PFNs ending at 0xff000, which
# libxl's PVH memory map marks reserved (libxl__arch_domain_construct_memmap).
X86_HVM_END_SPECIAL_REGION = 0xFF000
X86_HVM_NR_SPECIAL_PAGES = 8

E820_RAM = 1
E820_RESERVED = 2
E820MAX = 1024  # Xen's limit on a domain's memory map (XENMEM_set_memory_map)


@dataclass(frozen=True)
class Region:
    """A RAM window: a KVM slot covering gfns where the domain's RAM can be."""

    gpa: int
    size: int
    offset: int  # in the memfd


def default_e820(size: int) -> list[tuple[int, int, int]]:
    """libxl's PVH map for `size` bytes of RAM: low RAM, the special pages, high RAM."""
    low = min(size, LOWMEM_TOP)
    e820 = [(0, low, E820_RAM),
            ((X86_HVM_END_SPECIAL_REGION - X86_HVM_NR_SPECIAL_PAGES) << PAGE_SHIFT,
             X86_HVM_NR_SPECIAL_PAGES << PAGE_SHIFT, E820_RESERVED)]
    if size > low:
        e820.append((HIGHMEM_BASE, size - low, E820_RAM))
    return e820


class GuestMemory:
    """`size` bytes of RAM now, up to `max_size` (the domain's maximum reservation)."""

    def __init__(self, size: int, name: str = "pyxen-ram", max_size: int | None = None,
                 phys_bits: int = DEFAULT_PHYS_BITS) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError("guest memory must be a positive number of pages")
        max_size = max(size, max_size or size)
        max_size -= max_size % PAGE_SIZE
        low_max = min(max_size, LOWMEM_TOP)
        windows = [Window(0, low_max // PAGE_SIZE, 0)]
        if max_size > low_max:
            windows.append(Window(HIGHMEM_BASE >> PAGE_SHIFT, (max_size - low_max) // PAGE_SIZE,
                                  low_max))
        low = min(size, LOWMEM_TOP)
        populated = [(0, low // PAGE_SIZE)]
        if size > low:
            populated.append((HIGHMEM_BASE >> PAGE_SHIFT, (size - low) // PAGE_SIZE))
        self.store = Store(name, sum(w.pages for w in windows))
        self.p2m = P2M(self.store, windows, populated, (1 << (phys_bits - PAGE_SHIFT)) - 1)
        self.max_pages = max_size // PAGE_SIZE
        self.fd, self.map, self.view, self.hva = (self.store.fd, self.store.map,
                                                  self.store.view, self.store.hva)
        self.regions = [Region(w.gfn << PAGE_SHIFT, w.pages * PAGE_SIZE, w.offset)
                        for w in windows]
        self._e820 = default_e820(size)
        # Log-dirty mode (vmm/dirtylog.py) while a migration runs: pyxen's own writes to
        # guest RAM are marked there, as Xen's copy_to_guest marks them (paging_mark_dirty).
        self.dirty = None

    # --- accounting (Xen's d->tot_pages, d->max_pages) ------------------------------------

    @property
    def size(self) -> int:
        """Bytes of RAM the domain has now (its current reservation)."""
        return self.p2m.tot_pages * PAGE_SIZE

    @property
    def tot_pages(self) -> int:
        return self.p2m.tot_pages

    @property
    def max_gpfn(self) -> int:
        """Xen's domain_get_maximum_gpfn: the highest gfn ever mapped."""
        return self.p2m.max_mapped_gfn

    # --- guest-physical access ------------------------------------------------------------

    def _offset(self, gpa: int, n: int) -> int:
        """Store offset of [gpa, gpa+n): mapped and contiguous, else GuestFault. The
        offset is valid for `map`, `view` and `hva + offset` alike."""
        if 0 <= gpa and 0 <= n and gpa + n <= self.p2m.fast_end:
            return gpa
        return self.p2m.offset(gpa, n)

    def is_ram(self, gpa: int, n: int = 1) -> bool:
        """[gpa, gpa+n) is mapped (RAM or a placed page), so the hypervisor may touch it."""
        try:
            self._offset(gpa, n)
            return True
        except GuestFault:
            return False

    def read(self, gpa: int, n: int) -> bytes:
        if gpa >= 0 and n >= 0 and gpa + n <= self.p2m.fast_end:  # the page walker's case
            return self.map[gpa:gpa + n]
        if n > PAGE_SIZE - (gpa & (PAGE_SIZE - 1)):
            return b"".join(self._pieces(gpa, n, lambda off, c: self.map[off:off + c]))
        off = self._offset(gpa, n)
        return self.map[off:off + n]

    def write(self, gpa: int, data: bytes) -> None:
        n = len(data)
        if self.dirty is not None:
            self.dirty.mark_range(gpa, n)
        if gpa >= 0 and gpa + n <= self.p2m.fast_end:
            self.view[gpa:gpa + n] = data
            return
        offs = list(self._pieces(gpa, n, lambda off, c: (off, c)))  # all or nothing
        done = 0
        for off, c in offs:
            self.view[off:off + c] = data[done:done + c]
            done += c

    def _pieces(self, gpa: int, n: int, fn):
        """Page by page: the pages of a span need not be contiguous in the store."""
        if gpa < 0 or n < 0:
            raise GuestFault(gpa)
        while n:
            c = min(n, PAGE_SIZE - (gpa & (PAGE_SIZE - 1)))
            yield fn(self.p2m.offset(gpa, c), c)
            gpa += c
            n -= c

    def page(self, gfn: int) -> memoryview:
        """The page the guest sees at gfn (GuestFault for a hole); the caller may write it
        (grant mappings), so it counts as dirtied while logging."""
        off = self._offset(gfn << PAGE_SHIFT, PAGE_SIZE)
        if self.dirty is not None:
            self.dirty.mark(gfn)
        return self.view[off:off + PAGE_SIZE]

    # --- pages that are not RAM (the p2m's API, see p2m.py) -------------------------------

    def alloc_page(self, kind: str = "xen") -> Page:
        return self.store.alloc_page(kind)

    def import_page(self, fd: int, fd_offset: int, kind: str = "foreign") -> Page:
        return self.store.import_page(fd, fd_offset, kind)

    def free_page(self, page: Page) -> None:
        if page.gfn is not None:
            self.p2m.unmap(page.gfn)
        self.store.free_page(page)

    # --- the memory map ---------------------------------------------------------------------

    def e820(self) -> list[tuple[int, int, int]]:
        """(addr, size, type): the domain's memory map (XENMEM_memory_map, hvm_start_info)."""
        return list(self._e820)

    def add_firmware(self, gpa: int, size: int, e820_type: int) -> None:
        """Firmware pages in the MMIO hole (libxl's ACPI tables): pool pages the p2m places
        at gpa, and their e820 entry. They are not RAM (tot_pages does not count them)."""
        if gpa < LOWMEM_TOP or gpa + size > HIGHMEM_BASE or gpa % PAGE_SIZE or size % PAGE_SIZE:
            raise ValueError(f"firmware range {gpa:#x}+{size:#x} is not whole pages in the "
                             "MMIO hole")
        for i in range(size // PAGE_SIZE):
            self.p2m.map_page((gpa >> PAGE_SHIFT) + i, self.alloc_page("firmware"))
        self._e820 = sorted(self._e820 + [(gpa, size, e820_type)])

    def set_e820(self, entries: list[tuple[int, int, int]]) -> None:
        self._e820 = list(entries)

    def allocated_bytes(self) -> int:
        return self.store.allocated_bytes()

    def close(self) -> None:
        self.view.release()
        self.store.close()


def set_max_pages(d, max_kib: int) -> None:
    """XEN_DOMCTL_max_mem: the domain's maximum reservation. It may go below tot_pages
    (Xen 4.17 dropped that check): the domain keeps what it has and gets nothing more
    until it is back under. RAM can never be placed outside the windows made at boot, so
    a maximum above them only means the windows are the limit."""
    with d.memory.p2m.lock:
        d.memory.max_pages = max_kib >> 2
        d.max_memory = max_kib << 10
