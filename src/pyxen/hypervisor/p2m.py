"""The p2m: what backs each guest frame number (gfn) of a domain, realised on KVM.

Xen keeps one table per HVM domain from gfn to machine frame and a type; guests move pages
around in it (XENMAPSPACE_shared_info, grant frames, ballooning). Here every page a domain
can see lives in one memfd, the *store*, mapped once into the VMM:

    store offset 0 ..................... W*4K ........................ (W+POOL)*4K
                 | RAM windows (1:1 with gfn ranges)| pool: pages that are not RAM |

- **RAM windows** cover the gfn ranges where the domain's RAM can live (up to its maximum
  reservation: below 0xF0000000 and above 4 GiB). Each window is one KVM memory slot,
  created once and never split: a window gfn's store page is fixed. A window gfn is
  *populated* (the domain's RAM, counted in tot_pages) or a *hole*: its store page is
  punched (fallocate), so the host gets the memory back and old data is gone; the
  hypervisor (GuestMemory.read/write, the page walker) refuses it as Xen's p2m would.
  The guest's own accesses to a hole read zeros (KVM still maps the window): holes are
  invisible to the guest only through the hypervisor, which is what Xen's ABI promises.
- A page that is not the domain's RAM (shared info, a grant frame, a grant-mapped page,
  the console/xenstore pages) is a `Page`. Placed on a window gfn it *overlays* it: its
  file page is mmap()ed MAP_FIXED over the window's page in the VMM, which the guest
  (KVM follows the VMM's mapping through its MMU notifier) and the hypervisor both see.
  Placed outside the windows it gets its own one-page KVM slot pointing at its place in
  the pool. Either way `store.view[offset_of(gfn)]` is what the guest sees at gfn.

The API for other parts (grant tables, shared info, backends): `Store.alloc_page()` /
`Store.import_page(fd, offset)` make a Page, `P2M.map_page(gfn, page)` places it (moving
it: its previous gfn becomes a hole; whatever was at gfn is replaced, RAM being freed as
Xen frees it), `P2M.unmap(gfn)` removes it, `P2M.lookup(gfn)` says what is there.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .guest_access import GuestFault
from .public import errno as E

PAGE_SIZE = 4096
PAGE_SHIFT = 12
POOL_PAGES = 16384  # non-RAM pages a domain may have at once (64 MiB of address space)
DEFAULT_MAX_SLOTS = 509  # KVM's historical minimum of KVM_CAP_NR_MEMSLOTS

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long]
_mmap.restype = ctypes.c_void_p
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_fallocate.restype = ctypes.c_int
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
MAP_FAILED = ctypes.c_void_p(-1).value

# (slot, gpa, size, hva): a KVM memory slot; size 0 deletes it (arch/x86 implements it)
SlotSetter = Callable[[int, int, int, int], None]


class P2MError(Exception):
    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno


@dataclass(eq=False)
class Page:
    """A page that can be placed at a gfn: lives at `offset` of the store mapping (its
    home), and is shown elsewhere by mmap()ing `fd` at `fd_offset`."""

    offset: int
    fd: int
    fd_offset: int
    kind: str  # "ram" (a lookup of RAM), "xen" (pool page), "foreign", ...
    gfn: int | None = None  # where it is placed now (a Page has one place at a time)
    owned_fd: bool = False  # fd is a dup() the store closes when the page is freed
    # Called (under the p2m lock) when the page leaves the physmap without being moved:
    # replaced by something else, removed, ballooned out. Its owner forgets the gfn.
    on_unmap: Callable[[Page, int], None] | None = None


@dataclass(frozen=True)
class Window:
    gfn: int
    pages: int
    offset: int  # in the store

    @property
    def end(self) -> int:
        return self.gfn + self.pages


def _map_fixed(addr: int, fd: int, offset: int) -> None:
    ret = _mmap(addr, PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE,
                mmap.MAP_SHARED | 0x10, fd, offset)  # MAP_FIXED
    if ret in (None, MAP_FAILED) or ret != addr:
        e = ctypes.get_errno()
        raise OSError(e, f"mmap(MAP_FIXED) at {addr:#x}: {os.strerror(e)}")


class Store:
    """The memfd holding every page of a domain, mapped once into the VMM."""

    def __init__(self, name: str, window_pages: int, pool_pages: int = POOL_PAGES) -> None:
        self.window_pages = window_pages
        self.pool_base = window_pages * PAGE_SIZE
        self.pool_pages = pool_pages
        self.size = (window_pages + pool_pages) * PAGE_SIZE
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)  # sparse: nothing is allocated until touched
        self.map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)
        self.hva = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        # free pool indices: those freed (reused first, last freed first), then the
        # never-used ones from _next up (a counter, not a 16K-entry list per domain)
        self._free: list[int] = []
        self._next = 0
        self.lock = threading.Lock()

    def punch(self, offset: int, n: int = PAGE_SIZE) -> None:
        """Give the pages back to the host; they read as zeros afterwards."""
        if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, n) < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"fallocate(PUNCH_HOLE): {os.strerror(e)}")

    def allocated_bytes(self) -> int:
        """Host memory the store holds now (what ballooning gives back)."""
        return os.fstat(self.fd).st_blocks * 512

    def _take(self) -> int:
        with self.lock:
            if self._free:
                return self.pool_base + self._free.pop() * PAGE_SIZE
            if self._next >= self.pool_pages:
                raise P2MError(E.ENOMEM, "no free page in the domain's pool")
            self._next += 1
            return self.pool_base + (self._next - 1) * PAGE_SIZE

    def alloc_page(self, kind: str = "xen") -> Page:
        """A zeroed page of the pool (Xen: a Xen-heap page shared with the guest)."""
        off = self._take()
        return Page(off, self.fd, off, kind)

    def import_page(self, fd: int, fd_offset: int, kind: str = "foreign") -> Page:
        """Page `fd_offset` of another memfd (a foreign page) given a home in the pool.

        The fd is dup()ed: the caller may close its own."""
        off = self._take()
        own = os.dup(fd)
        try:
            _map_fixed(self.hva + off, own, fd_offset)
        except OSError:
            os.close(own)
            self._give_back(off)
            raise
        return Page(off, own, fd_offset, kind, owned_fd=True)

    def free_page(self, page: Page) -> None:
        """Return a pool page (it must not be placed anywhere any more)."""
        assert page.gfn is None, "free_page() of a page still in the p2m"
        if page.offset < self.pool_base:
            return  # a RAM lookup: nothing to free
        if page.owned_fd:
            _map_fixed(self.hva + page.offset, self.fd, page.offset)
            os.close(page.fd)
            page.owned_fd = False
        self.punch(page.offset)
        self._give_back(page.offset)

    def _give_back(self, off: int) -> None:
        with self.lock:
            self._free.append((off - self.pool_base) // PAGE_SIZE)

    def close(self) -> None:
        self.view.release()
        self.map.close()
        os.close(self.fd)


class P2M:
    """gfn -> page for one domain; RAM accounting (Xen's tot_pages) lives here too."""

    def __init__(self, store: Store, windows: list[Window], populated: list[tuple[int, int]],
                 max_gfn: int) -> None:
        self.store = store
        self.windows = windows
        self.max_gfn = max_gfn  # highest gfn the guest's physical address width allows
        self._pop = bytearray(sum(w.pages for w in windows))  # 1: window gfn is RAM
        self.overlay: dict[int, Page] = {}  # window gfn -> page shown over it
        self.outside: dict[int, Page] = {}  # gfn outside the windows -> page (own slot)
        self._slot_of: dict[int, int] = {}
        self._free_slots: list[int] = []
        self._next_slot = len(windows)
        self.max_slots = DEFAULT_MAX_SLOTS
        self._set_slot: SlotSetter | None = None
        self.lock = threading.RLock()
        self.orphans = 0  # RAM pages the domain owns but no gfn maps (Xen leaks them too)
        for gfn, n in populated:
            i = self._index(gfn)
            assert i is not None and self._index(gfn + n - 1) == i + n - 1
            self._pop[i:i + n] = b"\x01" * n
        self.nr_ram = sum(n for _, n in populated)
        self.max_mapped_gfn = max((g + n - 1 for g, n in populated), default=0)
        self.fast_end = 0
        # fast_end where C can read it (the vCPU loop's EVTCHNOP_send shortcut walks the
        # guest's page tables below it: hypervisor/event_channel.py FastSend)
        self.fast_end_cell = ctypes.c_uint64(0)
        self._update_fast_end()

    # --- where things are ------------------------------------------------------------------

    def _window(self, gfn: int) -> tuple[Window, int] | None:
        base = 0
        for w in self.windows:
            if w.gfn <= gfn < w.end:
                return w, base + gfn - w.gfn
            base += w.pages
        return None

    def _index(self, gfn: int) -> int | None:
        hit = self._window(gfn)
        return None if hit is None else hit[1]

    def window_offset(self, gfn: int) -> int | None:
        hit = self._window(gfn)
        return None if hit is None else hit[0].offset + (gfn - hit[0].gfn) * PAGE_SIZE

    def _update_fast_end(self) -> None:
        """GuestMemory's fast path: [0, fast_end) is the first window, all populated or
        overlaid, so guest-physical address == store offset there."""
        w = self.windows[0] if self.windows and self.windows[0].gfn == 0 else None
        if w is None:
            self.fast_end = self.fast_end_cell.value = 0
            return
        end = w.pages
        i = 0
        while True:
            hole = self._pop.find(0, i, end)
            if hole < 0 or hole not in self.overlay:
                break
            i = hole + 1
        self.fast_end = self.fast_end_cell.value = (end if hole < 0 else hole) * PAGE_SIZE

    def page_offset(self, gfn: int) -> int | None:
        """Store offset of what the guest sees at gfn, or None for a hole."""
        hit = self._window(gfn)
        if hit is not None:
            w, i = hit
            if self._pop[i] or gfn in self.overlay:
                return w.offset + (gfn - w.gfn) * PAGE_SIZE
            return None
        page = self.outside.get(gfn)
        return None if page is None else page.offset

    def offset(self, gpa: int, n: int) -> int:
        """Store offset of guest-physical [gpa, gpa+n), which must be mapped and contiguous
        in the store; GuestFault otherwise."""
        if gpa < 0 or n < 0:
            raise GuestFault(gpa)
        first = gpa >> PAGE_SHIFT
        off = self.page_offset(first)
        if off is None:
            raise GuestFault(gpa)
        for k in range(1, ((gpa + max(n, 1) - 1) >> PAGE_SHIFT) - first + 1):
            if self.page_offset(first + k) != off + k * PAGE_SIZE:
                raise GuestFault(gpa + k * PAGE_SIZE)
        return off + (gpa & (PAGE_SIZE - 1))

    def lookup(self, gfn: int) -> Page | None:
        """What is at gfn: a placed Page, a Page(kind="ram") describing the domain's RAM
        page there, or None for a hole."""
        page = self.overlay.get(gfn) or self.outside.get(gfn)
        if page is not None:
            return page
        off = self.page_offset(gfn)
        return None if off is None else Page(off, self.store.fd, off, "ram", gfn)

    def is_populated(self, gfn: int) -> bool:
        """RAM of the domain (not a placed page, not a hole)."""
        i = self._index(gfn)
        return i is not None and bool(self._pop[i]) and gfn not in self.overlay

    @property
    def tot_pages(self) -> int:
        return self.nr_ram + self.orphans

    def ram_gfns(self) -> list[int]:
        """The gfns of the domain's RAM, ascending (placed pages over RAM excluded): what a
        core dump holds (xl dump-core, vmm/domctl.py)."""
        out = []
        with self.lock:
            base = 0
            for w in self.windows:
                pop = self._pop
                i = pop.find(1, base, base + w.pages)
                while i >= 0:
                    gfn = w.gfn + i - base
                    if gfn not in self.overlay:
                        out.append(gfn)
                    i = pop.find(1, i + 1, base + w.pages)
                base += w.pages
        return out

    # --- KVM -------------------------------------------------------------------------------

    def attach(self, set_slot: SlotSetter, max_slots: int) -> None:
        """Realise the p2m as KVM memory slots from now on (arch/x86 calls this once)."""
        with self.lock:
            self._set_slot = set_slot
            self.max_slots = max_slots
            for i, w in enumerate(self.windows):
                set_slot(i, w.gfn << PAGE_SHIFT, w.pages * PAGE_SIZE, self.store.hva + w.offset)
            for gfn in self.outside:
                self._slot_add(gfn)

    def slots_used(self) -> int:
        return len(self.windows) + len(self._slot_of)

    def _slot_add(self, gfn: int) -> None:
        page = self.outside[gfn]
        if gfn in self._slot_of or self._set_slot is None:
            return
        slot = self._free_slots.pop() if self._free_slots else self._next_slot
        if slot == self._next_slot:
            self._next_slot += 1
        self._set_slot(slot, gfn << PAGE_SHIFT, PAGE_SIZE, self.store.hva + page.offset)
        self._slot_of[gfn] = slot

    def _slot_del(self, gfn: int) -> None:
        slot = self._slot_of.pop(gfn, None)
        if slot is not None and self._set_slot is not None:
            self._set_slot(slot, gfn << PAGE_SHIFT, 0, 0)
            self._free_slots.append(slot)

    # --- changes (callers hold self.lock for a sequence that must look atomic) -----------

    def check_gfn(self, gfn: int) -> None:
        if not 0 <= gfn <= self.max_gfn:
            raise P2MError(E.EINVAL, f"gfn {gfn:#x} is beyond the guest's physical "
                                     f"address width (max {self.max_gfn:#x})")

    def _clear(self, gfn: int, free_ram: bool = True, notify: bool = True) -> str | None:
        """Make gfn a hole; returns what was there ("ram", "page", None).

        RAM is freed (punched, no longer counted) or, free_ram=False, kept by the domain
        as an orphan (Xen's remove_from_physmap); a placed page is unhooked, not freed."""
        hit = self._window(gfn)
        page = self.overlay.pop(gfn, None) if hit is not None else self.outside.pop(gfn, None)
        if page is not None and page.kind == "ram":  # RAM outside the windows
            self._slot_del(gfn)
            page.gfn = None
            self.store.free_page(page)
            self.nr_ram -= 1
            if not free_ram:
                self.orphans += 1
            return "ram"
        if page is not None:
            page.gfn = None
            if hit is not None:
                w, _ = hit
                off = w.offset + (gfn - w.gfn) * PAGE_SIZE
                _map_fixed(self.store.hva + off, self.store.fd, off)  # the window's own page
                self.store.punch(off)  # freed when the page was placed; still a hole
                self._update_fast_end()
            else:
                self._slot_del(gfn)
            if notify and page.on_unmap is not None:
                page.on_unmap(page, gfn)
            return "page"
        if hit is not None and self._pop[hit[1]]:
            w, i = hit
            self._pop[i] = 0
            self.nr_ram -= 1
            if not free_ram:
                self.orphans += 1
            self.store.punch(w.offset + (gfn - w.gfn) * PAGE_SIZE)
            if (gfn << PAGE_SHIFT) < self.fast_end:
                self._update_fast_end()
            return "ram"
        return None

    def map_page(self, gfn: int, page: Page) -> None:
        """Place `page` at gfn (Xen's xenmem_add_to_physmap_one for a non-RAM page).

        Whatever was at gfn goes: RAM is freed (Xen frees it rather than leak it), another
        placed page is unhooked. If `page` was placed elsewhere, that gfn becomes a hole.
        P2MError(EINVAL) beyond the physical address width, (ENOMEM) without a KVM slot."""
        with self.lock:
            self.check_gfn(gfn)
            if page.gfn == gfn:
                return
            inside = self._window(gfn) is not None
            if not inside and gfn not in self.outside and self.slots_used() >= self.max_slots:
                raise P2MError(E.ENOMEM, "no KVM memory slot left for a page outside RAM")
            if page.gfn is not None:
                self._clear(page.gfn, notify=False)  # a move: the old place is a hole
            self._clear(gfn)
            if inside:
                off = self.window_offset(gfn)
                assert off is not None
                _map_fixed(self.store.hva + off, page.fd, page.fd_offset)
                self.overlay[gfn] = page
            else:
                self.outside[gfn] = page
                self._slot_add(gfn)
            page.gfn = gfn
            self.max_mapped_gfn = max(self.max_mapped_gfn, gfn)

    def unmap(self, gfn: int) -> Page | None:
        """Remove the page placed at gfn (gfn becomes a hole); None if there is none."""
        with self.lock:
            page = self.overlay.get(gfn) or self.outside.get(gfn)
            if page is not None:
                self._clear(gfn)
            return page

    def remove(self, gfn: int, free_ram: bool) -> str | None:
        """Make gfn a hole whatever is there (see _clear)."""
        with self.lock:
            return self._clear(gfn, free_ram)

    def populate(self, gfn: int) -> bool:
        """New zeroed RAM at gfn (Xen's populate_physmap of one page). A window gfn uses its
        own store page; elsewhere a pool page with its own KVM slot. RAM already there is
        orphaned as in Xen (still the domain's, still counted, no longer mapped); a placed
        page there makes it fail (False)."""
        with self.lock:
            self.check_gfn(gfn)
            hit = self._window(gfn)
            if gfn in self.overlay or (gfn in self.outside
                                       and self.outside[gfn].kind != "ram"):
                return False
            if hit is not None:
                w, i = hit
                if self._pop[i]:
                    self.orphans += 1
                    self.nr_ram -= 1
                self.store.punch(w.offset + (gfn - w.gfn) * PAGE_SIZE)  # zeroed
                self._pop[i] = 1
                if gfn << PAGE_SHIFT == self.fast_end:
                    self._update_fast_end()
            else:
                if gfn in self.outside:  # RAM here already: orphan it
                    self._clear(gfn, free_ram=False)
                if self.slots_used() >= self.max_slots:
                    return False
                page = self.store.alloc_page("ram")
                page.gfn = gfn
                self.outside[gfn] = page
                self._slot_add(gfn)
            self.nr_ram += 1
            self.max_mapped_gfn = max(self.max_mapped_gfn, gfn)
            return True

    def release(self, gfn: int) -> bool:
        """decrease_reservation of one page: RAM is freed, a placed page unhooked; False
        for a hole (Xen: -EINVAL, the operation stops)."""
        with self.lock:
            return self._clear(gfn) is not None

    def move_ram(self, src: int, dst: int) -> int:
        """XENMAPSPACE_gmfn: the RAM page at src appears at dst instead (src becomes a
        hole; what was at dst goes as in map_page). 0 or -errno."""
        with self.lock:
            self.check_gfn(dst)
            if not self.is_populated(src) and not (
                    src in self.outside and self.outside[src].kind == "ram"):
                return -E.EINVAL
            if src == dst:
                return 0
            data = self.store.map[self.page_offset(src):self.page_offset(src) + PAGE_SIZE]
            self._clear(dst)
            if not self.populate(dst):
                return -E.ENOMEM
            off = self.page_offset(dst)
            assert off is not None
            self.store.view[off:off + PAGE_SIZE] = data
            self.release(src)
            return 0

    # --- reporting --------------------------------------------------------------------------

    def describe(self) -> list[str]:
        """The non-RAM part of the p2m, for debug output."""
        out = []
        for gfn, page in sorted({**self.overlay, **self.outside}.items()):
            where = "over RAM window" if gfn in self.overlay else f"slot {self._slot_of.get(gfn)}"
            out.append(f"gfn {gfn:#x}: {page.kind} page ({where})")
        return out
