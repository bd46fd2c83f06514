"""Grant tables, v1 and v2 (xen/grant_table.h; Xen's common/grant_table.c checks).

A guest's table is `nr_frames` Xen pages of grant entries (8-byte `grant_entry_v1`, or
16-byte `grant_entry_v2` plus, in v2, separate status frames of 16-bit `grant_status_t`
words holding GTF_reading / GTF_writing). The guest maps them into its physical address
space with XENMAPSPACE_grant_table (`XENMAPIDX_grant_table_status` for status frames).
Here each frame is a page of the domain's pool (p2m.py), placed at the gfn the guest
chooses: any gfn its physical address width allows, RAM (freed, as Xen does) or a hole;
the frame's previous gfn becomes a hole.

Backends in pyxen reach guest memory only through `GrantTable.map` / `copy_*`, which
enforce what Xen enforces: the ref is in range, the entry is GTF_permit_access, it is
granted to the mapping domain, GTF_readonly forbids writable access, sub-page grants
(v2) are copied only within their window and never mapped, the frame is guest RAM; while
mapped (or during a copy) the entry carries GTF_reading / GTF_writing (v1: in the entry,
by cmpxchg against the guest; v2: in its status word). Failures raise `GrantError(GNTST_*)`.

The guest itself may map grants (GNTTABOP_map_grant_ref with GNTMAP_host_map, host_addr a
guest-physical address, as Xen allows an HVM/PVH guest) of the domains this VMM holds the
tables of: its own.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import atomic
from .hypercall import HypercallContext
from .p2m import P2MError, Page
from .public import errno as E
from .public import grant_table as G
from .public.xen import DOMID_SELF
from .xsm import XsmDenied, domain_exists, target_error, xsm_target

if TYPE_CHECKING:
    from .domain import Domain

PAGE_SIZE = 4096
DEFAULT_MAX_FRAMES = 64  # xl's gnttab_max_frames default
DEFAULT_MAX_MAPTRACK_FRAMES = 1024  # xl's max_maptrack_frames default
MAPTRACK_PER_FRAME = PAGE_SIZE // 16  # Xen's struct grant_mapping is 16 bytes
INITIAL_FRAMES = 1
INVALID_GFN = (1 << 64) - 1
SET_RETRIES = 4
PIN_LIMIT = 0x80  # Xen's 8-bit pin counters: a pin with the top bit set is refused
GNTTABOP_CMD_MASK = (1 << 12) - 1  # the rest of cmd is continuation state (cache_flush)

STATUS_BITS = G.GTF_reading | G.GTF_writing
CACHE_FLAGS = G.GTF_PAT | G.GTF_PWT | G.GTF_PCD
GRANT_MAP_KIND = "grant_map"  # p2m pages that are grant mappings (p2m_grant_map_rw/ro)


def grant_to_status_frames(nr_frames: int) -> int:
    return -(-nr_frames * G.ENTRIES_PER_FRAME_V2 // G.STATUS_PER_FRAME)


def status_to_grant_frames(nr_status: int) -> int:
    return -(-nr_status * G.STATUS_PER_FRAME // G.ENTRIES_PER_FRAME_V2)


class GrantError(Exception):
    def __init__(self, status: int, why: str = "") -> None:
        name = G.GNTST_NAMES.get(status, str(status))
        super().__init__(f"{name} ({why})" if why else name)
        self.status = status


@dataclass
class Active:
    """Xen's active_grant_entry: who has the entry pinned, how, and which bytes."""

    domid: int
    gfn: int
    readers: int = 0  # read-only pins
    writers: int = 0  # writable pins
    start: int = 0  # sub-page grants (v2): the window the grantee may touch
    length: int = PAGE_SIZE
    sub_page: bool = False

    @property
    def pins(self) -> int:
        return self.readers + self.writers


@dataclass
class GrantMapping:
    """A backend's mapping of one granted page; `buf` is valid until unmap()."""

    handle: int
    domid: int  # the granting domain
    ref: int
    readonly: bool
    buf: memoryview


@dataclass
class HostMapping:
    """A guest's own grant mapping (Xen's struct grant_mapping in its maptrack)."""

    domid: int  # the granting domain
    ref: int
    flags: int  # GNTMAP_*
    mfn: int
    gfn: int | None  # where it appears in the mapping guest's physmap (None: unmapped)


class Maptrack:
    """A domain's handles for the grants it maps: Xen's maptrack, `max_frames` pages of
    256 entries; a handle is reused once unmapped (oldest freed first)."""

    def __init__(self, max_frames: int = DEFAULT_MAX_MAPTRACK_FRAMES) -> None:
        self.limit = max_frames * MAPTRACK_PER_FRAME
        self.entries: dict[int, HostMapping] = {}
        self._free: deque[int] = deque()
        self._next = 0

    def get(self, mapping: HostMapping) -> int | None:
        """A new handle for `mapping`, or None when all `limit` are in use."""
        if self._free:
            h = self._free.popleft()
        elif self._next < self.limit:
            h, self._next = self._next, self._next + 1
        else:
            return None
        self.entries[h] = mapping
        return h

    def put(self, handle: int) -> None:
        del self.entries[handle]
        self._free.append(handle)

    def __len__(self) -> int:
        return len(self.entries)


class _Frames:
    """Xen pages of one kind (shared or status): pages of the domain's pool (Xen-heap
    pages shared with the guest), shown at a gfn once the guest maps one there."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.pages: list[Page] = []

    def __len__(self) -> int:
        return len(self.pages)

    @property
    def gfns(self) -> list[int | None]:
        return [p.gfn for p in self.pages]

    def add(self) -> None:
        self.pages.append(self.domain.memory.alloc_page("grant"))  # zeroed

    def addr(self, i: int) -> int:
        return self.domain.memory.hva + self.pages[i].offset  # its home: never moves

    def place(self, i: int, gfn: int) -> int:
        """XENMAPSPACE_grant_table: the frame appears at gfn; its old gfn becomes a hole,
        whatever was at gfn goes (RAM freed, as Xen). 0 or -errno."""
        try:
            self.domain.memory.p2m.map_page(gfn, self.pages[i])
            return 0
        except P2MError as e:
            return -e.errno

    def gmfn(self, i: int) -> int:
        gfn = self.pages[i].gfn
        return INVALID_GFN if gfn is None else gfn

    def clear(self) -> None:
        for i in range(len(self)):
            ctypes.memset(self.addr(i), 0, PAGE_SIZE)

    def drop_all(self) -> None:
        """gnttab_unpopulate_status_frames: each leaves the physmap (a hole) and is freed."""
        for page in self.pages:
            self.domain.memory.free_page(page)
        self.pages.clear()


class GrantTable:
    """One domain's grant table, as seen by its guest and by the backends."""

    def __init__(self, domain: Domain, max_frames: int = DEFAULT_MAX_FRAMES,
                 max_maptrack_frames: int = DEFAULT_MAX_MAPTRACK_FRAMES) -> None:
        self.domain = domain
        self.version = 1
        self.max_frames = max_frames
        self.shared = _Frames(domain)
        self.status = _Frames(domain)  # v2 only
        self.active: dict[int, Active] = {}
        self.maptrack: dict[int, GrantMapping] = {}  # backends' mappings of our grants
        self.host_maps = Maptrack(max_maptrack_frames)  # the guest's own mappings
        self._handles = itertools.count(1)
        self.lock = threading.RLock()
        self.dead = False
        self.grow(INITIAL_FRAMES)

    # --- frames ---------------------------------------------------------------------------

    @property
    def nr_frames(self) -> int:
        return len(self.shared)

    @property
    def frames(self) -> list[int | None]:
        """The gfn each shared frame is mapped at (None: not mapped)."""
        return self.shared.gfns

    @property
    def per_frame(self) -> int:
        return G.ENTRIES_PER_FRAME_V1 if self.version == 1 else G.ENTRIES_PER_FRAME_V2

    @property
    def nr_entries(self) -> int:
        return self.nr_frames * self.per_frame

    def grow(self, nr_frames: int) -> bool:
        """gnttab_grow_table: never shrinks; False beyond max_frames. In v2 the status
        frames grow along."""
        with self.lock:
            if nr_frames > self.max_frames:
                return False
            while len(self.shared) < nr_frames:
                self.shared.add()
            if self.version == 2:
                while len(self.status) < grant_to_status_frames(self.nr_frames):
                    self.status.add()
            return True

    def frame_addr(self, i: int) -> int:
        return self.shared.addr(i)

    def map_frame(self, idx: int, gfn: int) -> int:
        """XENMAPSPACE_grant_table: frame idx (a status frame with
        XENMAPIDX_grant_table_status, in v2) appears at gfn (0 or -errno)."""
        with self.lock:
            if self.version == 2 and idx & G.XENMAPIDX_grant_table_status:
                idx &= ~G.XENMAPIDX_grant_table_status
                frames = self.status
                if idx >= len(frames):  # grow the table until status frame idx exists
                    nr_grant = status_to_grant_frames(idx + 1)
                    if nr_grant <= self.max_frames:
                        self.grow(nr_grant)
            else:
                frames = self.shared
                if idx >= len(frames) and idx + 1 <= self.max_frames:
                    self.grow(idx + 1)
            if idx >= len(frames):
                return -E.EINVAL
            return frames.place(idx, gfn)

    # --- entries ----------------------------------------------------------------------------

    def entry_addr(self, ref: int) -> int:
        """The entry's header (flags, domid), v1 or v2."""
        per = self.per_frame
        frame, slot = divmod(ref, per)
        return self.frame_addr(frame) + slot * (PAGE_SIZE // per)

    def status_addr(self, ref: int) -> int:
        """Where GTF_reading / GTF_writing live: the entry's flags (v1), its status word (v2)."""
        if self.version == 1:
            return self.entry_addr(ref)
        frame, slot = divmod(ref, G.STATUS_PER_FRAME)
        return self.status.addr(frame) + 2 * slot

    def read_entry(self, ref: int) -> G.grant_entry_v1:
        return G.grant_entry_v1.from_address(self.entry_addr(ref))

    def read_entry_v2(self, ref: int) -> G.grant_entry_v2:
        return G.grant_entry_v2.from_address(self.entry_addr(ref))

    def read_status(self, ref: int) -> int:
        return ctypes.c_uint16.from_address(self.status_addr(ref)).value

    # --- pinning (_set_status_v1/_v2, acquire and its undo) ---------------------------------

    def _acquire(self, ref: int, domid: int, readonly: bool, mapping: bool = False) -> Active:
        """Pin ref for domid (Xen's map_grant_ref / acquire_grant_for_copy checks, in
        their order). `mapping`: a map (sub-page and transitive grants refused)."""
        if self.dead:
            raise GrantError(G.GNTST_bad_domain, f"d{self.domain.domid} is dying")
        if not 0 <= ref < self.nr_entries:
            raise GrantError(G.GNTST_bad_gntref, f"ref {ref} >= {self.nr_entries} entries")
        act = self.active.get(ref)
        if act is not None and (act.domid != domid or act.readers >= PIN_LIMIT
                                or act.writers >= PIN_LIMIT or (mapping and act.sub_page)):
            raise GrantError(G.GNTST_general_error,
                             f"ref {ref}: in use by d{act.domid}, risk of pin overflow, "
                             "or sub-page")
        if act is None or (not readonly and act.writers == 0):
            if self.version == 1:
                self._set_status_v1(ref, domid, readonly, mapping, pinned=act is not None)
            else:
                self._set_status_v2(ref, domid, readonly, mapping, pinned=act is not None)
        if act is None:
            act = self._first_pin(ref, domid, readonly)
            self.active[ref] = act
        if readonly:
            act.readers += 1
        else:
            act.writers += 1
        return act

    def _first_pin(self, ref: int, domid: int, readonly: bool) -> Active:
        undo = STATUS_BITS if not readonly else G.GTF_reading
        addr = self.entry_addr(ref)
        if self.version == 1:
            act = Active(domid, atomic.read_u32(addr + 4))
        else:
            flags = ctypes.c_uint16.from_address(addr).value
            if flags & G.GTF_type_mask == G.GTF_transitive:
                # Xen resolves it in the domain named by trans_domid; the only domains
                # it may name here are this one (self-referential) or ones whose tables
                # live elsewhere: Xen's answer for both is this.
                self._clear_status(ref, undo)
                raise GrantError(G.GNTST_general_error,
                                 f"ref {ref}: transitive grant to a domain not reachable")
            frame = ctypes.c_uint64.from_address(addr + G.V2_FRAME).value
            act = Active(domid, frame)
            if flags & G.GTF_sub_page:
                act.sub_page = True
                act.start = ctypes.c_uint16.from_address(addr + G.V2_PAGE_OFF).value
                act.length = ctypes.c_uint16.from_address(addr + G.V2_LENGTH).value
        if not self.frame_ok(act.gfn):
            self._clear_status(ref, undo)
            raise GrantError(G.GNTST_bad_page, f"ref {ref}: frame {act.gfn:#x} is not RAM")
        return act

    def _set_status_v1(self, ref: int, domid: int, readonly: bool, mapping: bool,
                       pinned: bool) -> None:
        mask = G.GTF_type_mask | (G.GTF_sub_page if mapping else 0)
        addr = self.entry_addr(ref)
        combo = atomic.read_u32(addr)
        for _ in range(SET_RETRIES + 1):
            flags, edomid = combo & 0xFFFF, combo >> 16
            if not pinned and (flags & mask != G.GTF_permit_access or edomid != domid):
                raise GrantError(G.GNTST_general_error,
                                 f"ref {ref}: bad flags ({flags:#x}) or dom ({edomid}); "
                                 f"expected d{domid}")
            new = flags | G.GTF_reading
            if not readonly:
                if flags & G.GTF_readonly:
                    raise GrantError(G.GNTST_general_error,
                                     f"ref {ref}: attempt to write-pin a r/o grant entry")
                new |= G.GTF_writing
            prev = atomic.cmpxchg32(addr, combo, (edomid << 16) | new)
            if prev == combo:
                return
            combo = prev
        raise GrantError(G.GNTST_general_error, f"ref {ref}: shared grant entry is unstable")

    def _set_status_v2(self, ref: int, domid: int, readonly: bool, mapping: bool,
                       pinned: bool) -> None:
        """v2: the status word is Xen's alone, so set it, then re-check the entry the
        guest may have changed meanwhile, and undo if it did."""
        mask = G.GTF_type_mask | (G.GTF_sub_page if mapping else 0)
        addr = self.entry_addr(ref)

        def bad(combo: int) -> bool:
            flags = combo & 0xFFFF
            kind = flags & mask
            return kind not in (G.GTF_permit_access, G.GTF_transitive) or combo >> 16 != domid

        combo = atomic.read_u32(addr)
        if not pinned and bad(combo):
            raise GrantError(G.GNTST_general_error,
                             f"ref {ref}: bad flags ({combo & 0xFFFF:#x}) or dom "
                             f"({combo >> 16}); expected d{domid}, flags {mask:#x}")
        if not readonly and combo & G.GTF_readonly:
            raise GrantError(G.GNTST_general_error,
                             f"ref {ref}: attempt to write-pin a r/o grant entry")
        atomic.fetch_or8(self.status_addr(ref),
                         G.GTF_reading if readonly else STATUS_BITS)
        combo = atomic.read_u32(addr)  # fetch_or is a full barrier
        if not pinned:
            if bad(combo) or (not readonly and combo & G.GTF_readonly):
                self._clear_status(ref, STATUS_BITS)
                raise GrantError(G.GNTST_general_error,
                                 f"ref {ref}: unstable flags ({combo & 0xFFFF:#x}) or dom "
                                 f"({combo >> 16}); expected d{domid}")
        elif combo & G.GTF_readonly:
            self._clear_status(ref, G.GTF_writing)
            raise GrantError(G.GNTST_general_error, f"ref {ref}: unstable grant readonly flag")

    def _clear_status(self, ref: int, bits: int) -> None:
        atomic.fetch_and8(self.status_addr(ref), 0xFF & ~bits)

    def _release(self, ref: int, readonly: bool) -> None:
        act = self.active[ref]
        if readonly:
            act.readers -= 1
        else:
            act.writers -= 1
            dirty = self.domain.memory.dirty
            if dirty is not None:  # Xen's gnttab_mark_dirty on a writable unmap
                dirty.mark(act.gfn)
        bits = 0
        if act.writers == 0 and not readonly:
            bits |= G.GTF_writing
        if act.pins == 0:
            bits |= G.GTF_reading
            del self.active[ref]
        if bits and not self.dead:
            self._clear_status(ref, bits)

    def _page(self, gfn: int) -> memoryview:
        return self.domain.memory.page(gfn)

    def mfn_of(self, gfn: int) -> int:
        """The "machine frame" of a guest page: its home page in the domain's memory file
        (what Xen reports as dev_bus_addr >> 12)."""
        page = self.domain.memory.p2m.lookup(gfn)
        assert page is not None
        return page.offset >> 12

    def frame_ok(self, gfn: int) -> bool:
        """get_paged_frame: gfn holds a page of this domain (RAM or one of its Xen pages),
        not a hole and not a page it has itself mapped from a grant."""
        page = self.domain.memory.p2m.lookup(gfn) if 0 <= gfn else None
        return page is not None and page.kind != GRANT_MAP_KIND

    # --- the backend's API ------------------------------------------------------------------

    def map(self, ref: int, domid: int = 0, readonly: bool = False) -> GrantMapping:
        """GNTTABOP_map_grant_ref by `domid` (a backend): the granted page, pinned."""
        with self.lock:
            act = self._acquire(ref, domid, readonly, mapping=True)
            page = self._page(act.gfn)
            h = next(self._handles)
            m = GrantMapping(h, self.domain.domid, ref, readonly,
                             page.toreadonly() if readonly else page)
            self.maptrack[h] = m
            return m

    def map_batch(self, refs: list[int], domid: int = 0,
                  readonly: bool = False) -> list[GrantMapping | GrantError]:
        """Several maps under one lock (a ring's worth of segments): each result is the
        mapping or the GrantError for that ref, as Xen's batched map_grant_ref."""
        out: list[GrantMapping | GrantError] = []
        with self.lock:
            for ref in refs:
                try:
                    out.append(self.map(ref, domid, readonly))
                except GrantError as e:
                    out.append(e)
        return out

    def unmap(self, m: GrantMapping | int) -> None:
        """GNTTABOP_unmap_grant_ref: GNTST_bad_handle for an unknown handle."""
        with self.lock:
            h = m if isinstance(m, int) else m.handle
            mapping = self.maptrack.pop(h, None)
            if mapping is None:
                raise GrantError(G.GNTST_bad_handle, f"no grant mapping with handle {h}")
            try:
                mapping.buf.release()
            except BufferError:  # the backend still exports it (its bug); unpin anyway
                pass
            self._release(mapping.ref, mapping.readonly)

    def unmap_batch(self, mappings: list[GrantMapping | int]) -> list[GrantError | None]:
        """Several unmaps under one lock; None where it worked."""
        out: list[GrantError | None] = []
        with self.lock:
            for m in mappings:
                try:
                    self.unmap(m)
                    out.append(None)
                except GrantError as e:
                    out.append(e)
        return out

    def copy_from(self, ref: int, offset: int, length: int, domid: int = 0) -> bytes:
        """GNTTABOP_copy with a source gref: `length` bytes at `offset` of the granted page."""
        with self.lock:
            act = self._acquire(ref, domid, readonly=True)
            try:
                _check_window(act, offset, length)
                return bytes(self._page(act.gfn)[offset:offset + length])
            finally:
                self._release(ref, readonly=True)

    def copy_to(self, ref: int, offset: int, data: bytes, domid: int = 0) -> None:
        """GNTTABOP_copy with a destination gref (needs a writable grant)."""
        with self.lock:
            act = self._acquire(ref, domid, readonly=False)
            try:
                _check_window(act, offset, len(data))
                self.domain.memory.write((act.gfn << 12) + offset, data)
            finally:
                self._release(ref, readonly=False)

    def destroy(self) -> None:
        """Domain destruction: every backend mapping is revoked, the table refuses all."""
        with self.lock:
            self.dead = True
            for m in self.maptrack.values():
                try:
                    m.buf.release()
                except BufferError:
                    pass
            self.maptrack.clear()
            self.host_maps.entries.clear()
            self.active.clear()

    # --- version ------------------------------------------------------------------------------

    def set_version(self, version: int) -> int:
        """GNTTABOP_set_version's work: 0, -EBUSY (entries past the reserved 8 in use) or
        -ERANGE (a reserved v2 entry v1 cannot hold). All entries are cleared except the
        reserved ones, which are translated, status bits included."""
        with self.lock:
            if version == self.version:
                return 0
            if any(ref >= G.GNTTAB_NR_RESERVED_ENTRIES for ref in self.active):
                return -E.EBUSY
            reserved = [self._reserved_as_v1(ref) for ref in range(G.GNTTAB_NR_RESERVED_ENTRIES)]
            if None in reserved:
                return -E.ERANGE
            if version == 2:
                while len(self.status) < grant_to_status_frames(self.nr_frames):
                    self.status.add()
            else:
                self.status.drop_all()
            self.shared.clear()
            self.version = version
            for ref, (flags, domid, frame) in enumerate(reserved):  # type: ignore[misc]
                addr = self.entry_addr(ref)
                if version == 1:
                    ctypes.c_uint32.from_address(addr + 4).value = frame
                    ctypes.c_uint32.from_address(addr).value = flags | domid << 16
                else:
                    ctypes.c_uint64.from_address(addr + G.V2_FRAME).value = frame
                    ctypes.c_uint16.from_address(self.status_addr(ref)).value = \
                        flags & STATUS_BITS
                    ctypes.c_uint32.from_address(addr).value = \
                        (flags & ~STATUS_BITS) | domid << 16
            return 0

    def _reserved_as_v1(self, ref: int) -> tuple[int, int, int] | None:
        """(flags with status bits, domid, frame) of reserved entry ref; None when a v2
        entry cannot be expressed in v1 (transitive, or a frame above 32 bits)."""
        addr = self.entry_addr(ref)
        combo = atomic.read_u32(addr)
        flags, domid = combo & 0xFFFF, combo >> 16
        if self.version == 1:
            return flags, domid, atomic.read_u32(addr + 4)
        kind = flags & G.GTF_type_mask
        frame = ctypes.c_uint64.from_address(addr + G.V2_FRAME).value
        if kind == G.GTF_transitive or (kind == G.GTF_permit_access and frame >> 32):
            return None
        if kind != G.GTF_permit_access:
            return 0, 0, 0
        return flags | self.read_status(ref), domid, frame

    # --- the guest's own mappings (HVM map_grant_ref / unmap_grant_ref) ----------------------

    def host_map(self, owner: GrantTable, ref: int, flags: int, host_addr: int,
                 p2m: GrantP2M) -> tuple[int, int, int]:
        """map_grant_ref by this table's domain of `owner`'s grant ref: (status, handle,
        dev_bus_addr). The page appears at gfn host_addr >> 12 of this domain."""
        me = self.domain.domid
        readonly = bool(flags & G.GNTMAP_readonly)
        mapping = HostMapping(owner.domain.domid, ref, flags, 0, None)
        handle = self.host_maps.get(mapping)
        if handle is None:
            return G.GNTST_no_device_space, 0, 0
        with owner.lock:
            try:
                act = owner._acquire(ref, me, readonly, mapping=True)
            except GrantError as e:
                self.host_maps.put(handle)
                return e.status, 0, 0
            cache = ctypes.c_uint16.from_address(owner.entry_addr(ref)).value & CACHE_FLAGS
            gfn = host_addr >> 12
            mfn = owner.mfn_of(act.gfn)
            if cache or not p2m.add_grant(gfn, owner, act.gfn, readonly):
                owner._release(ref, readonly)
                self.host_maps.put(handle)
                return G.GNTST_general_error, 0, 0
            mapping.mfn, mapping.gfn = mfn, gfn
            return G.GNTST_okay, handle, mfn << 12

    def host_unmap(self, handle: int, host_addr: int, dev_bus_addr: int, new_addr: int,
                   p2m: GrantP2M) -> int:
        """unmap_grant_ref / unmap_and_replace of the guest's own mapping: the status."""
        mapping = self.host_maps.entries.get(handle)
        if mapping is None:
            return G.GNTST_bad_handle
        owner = self._table_of(mapping.domid)
        if owner is None:  # its table went away with it: nothing left to undo
            self.host_maps.put(handle)
            return G.GNTST_okay
        with owner.lock:
            if dev_bus_addr and dev_bus_addr != mapping.mfn << 12:
                return G.GNTST_general_error
            if host_addr and mapping.gfn is not None:
                # replace_grant_p2m_mapping: no replacement for HVM; the gfn must hold
                # this very grant mapping, and becomes a hole
                if new_addr or not p2m.remove_grant(host_addr >> 12, mapping.mfn):
                    return G.GNTST_general_error
                mapping.gfn = None
                self.host_maps.put(handle)
                owner._release(mapping.ref, bool(mapping.flags & G.GNTMAP_readonly))
            return G.GNTST_okay

    def _table_of(self, domid: int) -> GrantTable | None:
        """The grant table of `domid` if this VMM holds it (only its own domain's)."""
        if domid == self.domain.domid and not self.dead:
            return self
        return None


def _check_window(act: Active, offset: int, length: int) -> None:
    """gnttab_copy_buf: within the page, then within a sub-page grant's window."""
    if offset < 0 or length < 0 or offset + length > PAGE_SIZE:
        raise GrantError(G.GNTST_bad_copy_arg, "copy beyond page area")
    if offset < act.start or offset + length > act.start + act.length:
        raise GrantError(G.GNTST_general_error,
                         f"copy out of the sub-page grant [{act.start}, "
                         f"{act.start + act.length})")


class GrantP2M:
    """Grant mappings in the mapping domain's physmap (Xen's create_grant_p2m_mapping and
    replace_grant_p2m_mapping): p2m pages of kind "grant_map" showing the granted page."""

    def __init__(self, domain: Domain) -> None:
        self.p2m = domain.memory.p2m

    def add_grant(self, gfn: int, owner: GrantTable, owner_gfn: int, readonly: bool) -> bool:
        """Show owner's page owner_gfn at gfn; False if gfn is beyond the guest's physical
        address width, already holds a grant mapping (Xen crashes the domain for that;
        here the map fails), or no KVM slot is left. RAM at gfn stays the domain's but
        unmapped, as in Xen. (The mapping is writable either way: KVM slots here carry
        no per-page protection; GTF_writing is not set for a read-only map.)"""
        src = owner.domain.memory.p2m.lookup(owner_gfn)
        if src is None:
            return False
        alias = Page(src.offset, src.fd, src.fd_offset, GRANT_MAP_KIND)
        with self.p2m.lock:
            try:
                self.p2m.check_gfn(gfn)
            except P2MError:
                return False
            here = self.p2m.lookup(gfn)
            if here is not None and here.kind == GRANT_MAP_KIND:
                return False
            if here is not None and here.kind == "ram":
                self.p2m.remove(gfn, free_ram=False)
            try:
                self.p2m.map_page(gfn, alias)
            except P2MError:
                return False
        return True

    def remove_grant(self, gfn: int, mfn: int) -> bool:
        """Unmap the grant mapping of mfn at gfn (a hole again); False if gfn holds
        anything else."""
        with self.p2m.lock:
            here = self.p2m.lookup(gfn)
            if here is None or here.kind != GRANT_MAP_KIND or here.offset >> 12 != mfn:
                return False
            self.p2m.unmap(gfn)
        return True


# --- hypercalls -----------------------------------------------------------------------------


def guest_gnttab(d: Domain) -> GrantTable | None:
    return getattr(d, "grant_table", None)


def _other_dom_status(ctx: HypercallContext, dom: int) -> int | None:
    """None when the caller may act on dom; else the GNTST_* status (XSM check)."""
    try:
        xsm_target(ctx.domain, dom)
        return None
    except XsmDenied as e:
        return G.GNTST_permission_denied if e.errno == E.EPERM else G.GNTST_bad_domain


def _setup_table(ctx: HypercallContext, gt: GrantTable, arg: int) -> None:
    g = ctx.guest
    op = g.read_struct(arg, G.gnttab_setup_table)
    st = _other_dom_status(ctx, op.dom)
    if st is not None:
        op.status = st
    elif op.nr_frames > gt.max_frames or not gt.grow(op.nr_frames):
        op.status = G.GNTST_general_error
    else:
        op.status = G.GNTST_okay
        # xen_pfn_t: 4 bytes for a 32-bit caller (Xen's compat layer truncates)
        try:
            g.write_words(op.frame_list, [gt.shared.gmfn(i) for i in range(op.nr_frames)])
        except Exception:
            op.status = G.GNTST_bad_virt_addr
    g.write_struct(arg, op)


def _query_size(ctx: HypercallContext, gt: GrantTable, arg: int) -> None:
    op = ctx.guest.read_struct(arg, G.gnttab_query_size)
    st = _other_dom_status(ctx, op.dom)
    if st is not None:
        op.status = st
    else:
        op.nr_frames, op.max_nr_frames, op.status = gt.nr_frames, gt.max_frames, G.GNTST_okay
    ctx.guest.write_struct(arg, op)


def _get_status_frames(ctx: HypercallContext, gt: GrantTable, arg: int) -> None:
    g = ctx.guest
    op = g.read_struct(arg, G.gnttab_get_status_frames)
    st = _other_dom_status(ctx, op.dom)
    with gt.lock:
        if st is not None:
            op.status = st
        elif op.nr_frames > len(gt.status):  # all of them in v1, which has none
            op.status = G.GNTST_general_error
        else:
            op.status = G.GNTST_okay
            frames = [gt.status.gmfn(i) for i in range(op.nr_frames)]
            try:  # uint64_t elements in both ABIs
                g.write(op.frame_list, b"".join(f.to_bytes(8, "little") for f in frames))
            except Exception:
                op.status = G.GNTST_bad_virt_addr
    g.write_struct(arg, op)


def _copy_one(ctx: HypercallContext, gt: GrantTable, op: G.gnttab_copy) -> int:
    """GNTTABOP_copy for an unprivileged guest: each side is its own gmfn or a grant of a
    domain in this process (only itself: dom0 has no grant table in pyxen). Xen's order:
    both domains, then the source (grant pinned or frame checked), then the destination,
    then the bounds."""
    me = ctx.domain.domid
    for ptr, flag in ((op.source, G.GNTCOPY_source_gref), (op.dest, G.GNTCOPY_dest_gref)):
        if ptr.domid != DOMID_SELF and not op.flags & flag:
            return G.GNTST_permission_denied  # only DOMID_SELF may name a frame
        st = _other_dom_status(ctx, ptr.domid)
        if st is not None:
            return st
    mem = ctx.domain.memory
    held: list[tuple[int, bool]] = []
    with gt.lock:
        try:
            sides = []
            for ptr, flag in ((op.source, G.GNTCOPY_source_gref),
                              (op.dest, G.GNTCOPY_dest_gref)):
                readonly = flag == G.GNTCOPY_source_gref
                if op.flags & flag:
                    act = gt._acquire(ptr.u.ref, me, readonly)
                    held.append((ptr.u.ref, readonly))
                else:
                    act = Active(me, ptr.u.gmfn)
                    if not gt.frame_ok(act.gfn):
                        return G.GNTST_bad_page
                sides.append(act)
            s_act, d_act = sides
            if op.source.offset + op.len > PAGE_SIZE or op.dest.offset + op.len > PAGE_SIZE:
                return G.GNTST_bad_copy_arg
            _check_window(s_act, op.source.offset, op.len)
            _check_window(d_act, op.dest.offset, op.len)
            data = mem.read((s_act.gfn << 12) + op.source.offset, op.len)
            mem.write((d_act.gfn << 12) + op.dest.offset, data)
        except GrantError as e:
            return e.status
        finally:
            for ref, readonly in reversed(held):
                gt._release(ref, readonly)
    return G.GNTST_okay


def _map_one(ctx: HypercallContext, gt: GrantTable, op: G.gnttab_map_grant_ref) -> None:
    """map_grant_ref from an HVM/PVH guest (handle and dev_bus_addr set on success)."""
    if not op.flags & (G.GNTMAP_device_map | G.GNTMAP_host_map):
        op.status = G.GNTST_bad_gntref
        return
    if op.flags & (G.GNTMAP_device_map | G.GNTMAP_application_map | G.GNTMAP_contains_pte):
        op.status = G.GNTST_general_error  # "no device mapping in HVM domain"
        return
    # rcu_lock_domain_by_id (DOMID_SELF is no domain here), then XSM_HOOK (allowed);
    # only tables this VMM holds can be mapped
    owner = gt._table_of(op.dom) if domain_exists(ctx.domain, op.dom) else None
    if owner is None or op.dom == DOMID_SELF:
        op.status = G.GNTST_bad_domain
        return
    status, handle, bus = gt.host_map(owner, op.ref, op.flags, op.host_addr,
                                      GrantP2M(ctx.domain))
    op.status = status
    if status == G.GNTST_okay:
        op.handle, op.dev_bus_addr = handle, bus


def _each(ctx: HypercallContext, uop: int, count: int, cls: type, fn) -> int:
    """Run fn on each of count structs at uop, writing each back: 0, or -EINTR if the
    domain is going away mid-batch."""
    g = ctx.guest
    size = g.sizeof(cls)
    for i in range(count):
        if not ctx.domain.preempt_check(ctx.vcpu):  # pause waits no longer than one op
            return -E.EINTR
        op = g.read_struct(uop + i * size, cls)
        fn(op)
        g.write_struct(uop + i * size, op)
    return 0


def _cache_flush(ctx: HypercallContext, op: G.gnttab_cache_flush, cur_ref: int) -> int:
    """One cache_flush op: 0 or -errno. x86 caches are coherent: cleaning is a no-op,
    invalidating without cleaning is not offered (Xen x86: -EOPNOTSUPP). cur_ref is
    Xen's continuation state from cmd's upper bits (never created here)."""
    if (op.offset >= PAGE_SIZE or op.length > PAGE_SIZE or op.offset + op.length > PAGE_SIZE
            or op.op & ~(G.GNTTAB_CACHE_INVAL | G.GNTTAB_CACHE_CLEAN)):
        return -E.EINVAL
    if op.length == 0 or op.op == 0:
        return 0 if not cur_ref else -E.EILSEQ
    mfn = op.a.dev_bus_addr >> 12
    if mfn >= ctx.domain.memory.store.size // PAGE_SIZE:
        return -E.EINVAL
    # the page is this domain's own (the only one here): no grant needs checking
    if op.op == G.GNTTAB_CACHE_INVAL:
        return -E.EOPNOTSUPP
    return 0


def do_grant_table_op(ctx: HypercallContext) -> int:
    gt = guest_gnttab(ctx.domain)
    if gt is None:
        return -E.ENOSYS
    raw_cmd, uop, count = ctx.arg(0) & 0xFFFFFFFF, ctx.arg(1), ctx.sarg(2)
    cmd = raw_cmd & GNTTABOP_CMD_MASK
    g = ctx.guest
    if count < 0:
        return -E.EINVAL
    if cmd != G.GNTTABOP_cache_flush and raw_cmd != cmd:
        return -E.EINVAL
    if cmd in (G.GNTTABOP_setup_table, G.GNTTABOP_query_size,
               G.GNTTABOP_get_status_frames) and count != 1:
        return -E.EINVAL  # as Xen: these take exactly one argument
    if cmd == G.GNTTABOP_setup_table:
        _setup_table(ctx, gt, uop)
        return 0
    if cmd == G.GNTTABOP_query_size:
        _query_size(ctx, gt, uop)
        return 0
    if cmd == G.GNTTABOP_get_status_frames:
        _get_status_frames(ctx, gt, uop)
        return 0
    if cmd == G.GNTTABOP_copy:
        def copy(op: G.gnttab_copy) -> None:
            op.status = _copy_one(ctx, gt, op)
        return _each(ctx, uop, count, G.gnttab_copy, copy)
    if cmd == G.GNTTABOP_map_grant_ref:
        return _each(ctx, uop, count, G.gnttab_map_grant_ref,
                     lambda op: _map_one(ctx, gt, op))
    if cmd in (G.GNTTABOP_unmap_grant_ref, G.GNTTABOP_unmap_and_replace):
        replace = cmd == G.GNTTABOP_unmap_and_replace
        p2m = GrantP2M(ctx.domain)

        def unmap(op) -> None:
            with gt.lock:
                op.status = gt.host_unmap(op.handle, op.host_addr,
                                          0 if replace else op.dev_bus_addr,
                                          op.new_addr if replace else 0, p2m)
        return _each(ctx, uop, count, G.gnttab_unmap_and_replace if replace
                     else G.gnttab_unmap_grant_ref, unmap)
    if cmd == G.GNTTABOP_swap_grant_ref:
        def swap(op: G.gnttab_swap_grant_ref) -> None:
            op.status = _swap(gt, op.ref_a, op.ref_b)
        return _each(ctx, uop, count, G.gnttab_swap_grant_ref, swap)
    if cmd == G.GNTTABOP_cache_flush:
        size = g.sizeof(G.gnttab_cache_flush)
        for i in range(count):
            rc = _cache_flush(ctx, g.read_struct(uop + i * size, G.gnttab_cache_flush),
                              raw_cmd >> 12)
            if rc:
                return rc
        return 0
    if cmd == G.GNTTABOP_get_version:
        gv = g.read_struct(uop, G.gnttab_get_version)
        if err := target_error(ctx.domain, gv.dom):
            return err
        gv.version = gt.version
        g.write_struct(uop, gv)
        return 0
    if cmd == G.GNTTABOP_set_version:
        sv = g.read_struct(uop, G.gnttab_set_version)
        rc = -E.EINVAL if sv.version not in (1, 2) else gt.set_version(sv.version)
        sv.version = gt.version
        g.write_struct(uop, sv)
        return rc
    return -E.ENOSYS  # transfer (PV only), dump_table


def _swap(gt: GrantTable, a: int, b: int) -> int:
    """swap_grant_ref: exchange two unused entries (and their status words)."""
    with gt.lock:
        n = gt.nr_entries
        if not 0 <= a < n or not 0 <= b < n:
            return G.GNTST_bad_gntref
        if a == b:
            return G.GNTST_okay
        if a in gt.active or b in gt.active:
            return G.GNTST_eagain
        size = PAGE_SIZE // gt.per_frame
        ea, eb = gt.entry_addr(a), gt.entry_addr(b)
        ta, tb = ctypes.string_at(ea, size), ctypes.string_at(eb, size)
        ctypes.memmove(ea, tb, size)
        ctypes.memmove(eb, ta, size)
        if gt.version == 2:
            sa = ctypes.c_uint16.from_address(gt.status_addr(a))
            sb = ctypes.c_uint16.from_address(gt.status_addr(b))
            sa.value, sb.value = sb.value, sa.value
        return G.GNTST_okay


def add_to_physmap_grant_table(d: Domain, idx: int, gfn: int) -> int:
    """XENMEM_add_to_physmap, space XENMAPSPACE_grant_table."""
    gt = guest_gnttab(d)
    if gt is None:
        return -E.EOPNOTSUPP
    return gt.map_frame(idx, gfn)
