"""Grant tables, v1 (xen/grant_table.h; Xen's common/grant_table.c checks).

A guest's table is `nr_frames` pages of 8-byte `grant_entry_v1`s. In Xen they are Xen
pages the guest maps with XENMAPSPACE_grant_table; here each frame lives in a private
buffer until the guest maps it at a gfn, and from then on *is* that guest page (its
contents move along when remapped).

Backends in pyxen reach guest memory only through `GrantTable.map` / `copy_*`, which
enforce what Xen enforces: the ref is in range, the entry is GTF_permit_access (transitive
grants are refused: not supported), it is granted to the mapping domain, GTF_readonly
forbids writable access, the frame is guest RAM; while mapped (or during a copy) the entry
carries GTF_reading / GTF_writing, set and cleared with atomic cmpxchg against the guest.
Failures raise `GrantError(GNTST_*)`.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import atomic
from .hypercall import HypercallContext
from .public import errno as E
from .public import grant_table as G
from .xsm import XsmDenied, target_error, xsm_target

if TYPE_CHECKING:
    from .domain import Domain

PAGE_SIZE = 4096
DEFAULT_MAX_FRAMES = 64  # xl's gnttab_max_frames default
INITIAL_FRAMES = 1
INVALID_GFN = (1 << 64) - 1
SET_RETRIES = 4


class GrantError(Exception):
    def __init__(self, status: int, why: str = "") -> None:
        name = G.GNTST_NAMES.get(status, str(status))
        super().__init__(f"{name} ({why})" if why else name)
        self.status = status


@dataclass
class Active:
    """Xen's active_grant_entry: who has the entry pinned, and how."""

    domid: int
    gfn: int
    readers: int = 0  # read-only pins
    writers: int = 0  # writable pins

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


class GrantTable:
    """One domain's grant table (v1), as seen by its guest and by the backends."""

    def __init__(self, domain: Domain, max_frames: int = DEFAULT_MAX_FRAMES) -> None:
        self.domain = domain
        self.version = 1
        self.max_frames = max_frames
        self.frames: list[int | None] = []  # gfn where frame i is mapped, or None
        self.shadows: list[ctypes.Array | None] = []
        self.active: dict[int, Active] = {}
        self.maptrack: dict[int, GrantMapping] = {}
        self._handles = itertools.count(1)
        self.lock = threading.RLock()
        self.dead = False
        self.grow(INITIAL_FRAMES)

    # --- frames ---------------------------------------------------------------------------

    @property
    def nr_frames(self) -> int:
        return len(self.frames)

    @property
    def nr_entries(self) -> int:
        return self.nr_frames * G.ENTRIES_PER_FRAME_V1

    def grow(self, nr_frames: int) -> bool:
        """gnttab_grow_table: never shrinks; False beyond max_frames."""
        with self.lock:
            if nr_frames > self.max_frames:
                return False
            while len(self.frames) < nr_frames:
                self.frames.append(None)
                self.shadows.append(ctypes.create_string_buffer(PAGE_SIZE))
            return True

    def frame_addr(self, i: int) -> int:
        gfn = self.frames[i]
        if gfn is None:
            shadow = self.shadows[i]
            assert shadow is not None
            return ctypes.addressof(shadow)
        mem = self.domain.memory
        return mem.hva + mem._offset(gfn << 12, PAGE_SIZE)

    def map_frame(self, idx: int, gfn: int) -> int:
        """XENMAPSPACE_grant_table: frame idx appears at gfn (0 or -errno)."""
        with self.lock:
            if idx & G.XENMAPIDX_grant_table_status:
                return -E.EINVAL  # status frames exist in v2 only
            if idx >= self.nr_frames and not self.grow(idx + 1):
                return -E.EINVAL
            if not self.domain.memory.is_ram(gfn << 12, PAGE_SIZE):
                return -E.EINVAL
            content = ctypes.string_at(self.frame_addr(idx), PAGE_SIZE)
            self.domain.memory.write(gfn << 12, content)
            self.frames[idx] = gfn
            self.shadows[idx] = None
            return 0

    def entry_addr(self, ref: int) -> int:
        frame, slot = divmod(ref, G.ENTRIES_PER_FRAME_V1)
        return self.frame_addr(frame) + slot * G.GRANT_ENTRY_V1_SIZE

    def read_entry(self, ref: int) -> G.grant_entry_v1:
        return G.grant_entry_v1.from_address(self.entry_addr(ref))

    # --- pinning (_set_status_v1 and its undo) ---------------------------------------------

    def _acquire(self, ref: int, domid: int, readonly: bool) -> Active:
        if self.dead:
            raise GrantError(G.GNTST_bad_domain, f"d{self.domain.domid} is dying")
        if not 0 <= ref < self.nr_entries:
            raise GrantError(G.GNTST_bad_gntref, f"ref {ref} >= {self.nr_entries} entries")
        act = self.active.get(ref)
        if act is not None and act.domid != domid:
            raise GrantError(G.GNTST_general_error, f"ref {ref} is in use by d{act.domid}")
        if act is None or (not readonly and act.writers == 0):
            self._set_status(ref, domid, readonly, pinned=act is not None)
        if act is None:
            gfn = atomic.read_u32(self.entry_addr(ref) + 4)
            if not self.domain.memory.is_ram(gfn << 12, PAGE_SIZE):
                self._clear_flags(ref, G.GTF_reading | (0 if readonly else G.GTF_writing))
                raise GrantError(G.GNTST_bad_page, f"ref {ref}: frame {gfn:#x} is not RAM")
            act = self.active[ref] = Active(domid, gfn)
        if readonly:
            act.readers += 1
        else:
            act.writers += 1
        return act

    def _set_status(self, ref: int, domid: int, readonly: bool, pinned: bool) -> None:
        addr = self.entry_addr(ref)
        combo = atomic.read_u32(addr)
        for _ in range(SET_RETRIES + 1):
            flags, edomid = combo & 0xFFFF, combo >> 16
            if not pinned:
                kind = flags & G.GTF_type_mask
                if kind == G.GTF_transitive:
                    raise GrantError(G.GNTST_general_error,
                                     f"ref {ref}: transitive grants are not supported")
                if kind != G.GTF_permit_access or edomid != domid:
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

    def _clear_flags(self, ref: int, bits: int) -> None:
        atomic.fetch_and8(self.entry_addr(ref), 0xFF & ~bits)

    def _release(self, ref: int, readonly: bool) -> None:
        act = self.active[ref]
        if readonly:
            act.readers -= 1
        else:
            act.writers -= 1
        bits = 0
        if act.writers == 0 and not readonly:
            bits |= G.GTF_writing
        if act.pins == 0:
            bits |= G.GTF_reading
            del self.active[ref]
        if bits and not self.dead:
            self._clear_flags(ref, bits)

    def _page(self, gfn: int) -> memoryview:
        mem = self.domain.memory
        off = mem._offset(gfn << 12, PAGE_SIZE)
        return mem.view[off:off + PAGE_SIZE]

    # --- the backend's API ------------------------------------------------------------------

    def map(self, ref: int, domid: int = 0, readonly: bool = False) -> GrantMapping:
        """GNTTABOP_map_grant_ref by `domid` (a backend): the granted page, pinned."""
        with self.lock:
            act = self._acquire(ref, domid, readonly)
            page = self._page(act.gfn)
            h = next(self._handles)
            m = GrantMapping(h, self.domain.domid, ref, readonly,
                             page.toreadonly() if readonly else page)
            self.maptrack[h] = m
            return m

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

    def copy_from(self, ref: int, offset: int, length: int, domid: int = 0) -> bytes:
        """GNTTABOP_copy with a source gref: `length` bytes at `offset` of the granted page."""
        with self.lock:
            act = self._acquire(ref, domid, readonly=True)
            try:
                _check_span(offset, length)
                off = self.domain.memory._offset(act.gfn << 12, PAGE_SIZE) + offset
                return bytes(self.domain.memory.view[off:off + length])
            finally:
                self._release(ref, readonly=True)

    def copy_to(self, ref: int, offset: int, data: bytes, domid: int = 0) -> None:
        """GNTTABOP_copy with a destination gref (needs a writable grant)."""
        with self.lock:
            act = self._acquire(ref, domid, readonly=False)
            try:
                _check_span(offset, len(data))
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
            self.active.clear()


def _check_span(offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > PAGE_SIZE:
        raise GrantError(G.GNTST_bad_copy_arg, "copy beyond page area")


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
    op = ctx.guest.read_struct(arg, G.gnttab_setup_table)
    st = _other_dom_status(ctx, op.dom)
    if st is not None:
        op.status = st
    elif op.nr_frames > gt.max_frames or not gt.grow(op.nr_frames):
        op.status = G.GNTST_general_error
    else:
        op.status = G.GNTST_okay
        for i in range(op.nr_frames):
            gfn = gt.frames[i]
            try:
                ctx.guest.write(op.frame_list + 8 * i,
                                (INVALID_GFN if gfn is None else gfn).to_bytes(8, "little"))
            except Exception:
                op.status = G.GNTST_bad_virt_addr
    ctx.guest.write_struct(arg, op)


def _query_size(ctx: HypercallContext, gt: GrantTable, arg: int) -> None:
    op = ctx.guest.read_struct(arg, G.gnttab_query_size)
    st = _other_dom_status(ctx, op.dom)
    if st is not None:
        op.status = st
    else:
        op.nr_frames, op.max_nr_frames, op.status = gt.nr_frames, gt.max_frames, G.GNTST_okay
    ctx.guest.write_struct(arg, op)


def _copy_one(ctx: HypercallContext, gt: GrantTable, op: G.gnttab_copy) -> int:
    """GNTTABOP_copy for an unprivileged guest: each side is its own gmfn or a grant of a
    domain in this process (only itself: dom0 has no grant table in pyxen)."""
    me = ctx.domain.domid
    sides = []
    for ptr, flag in ((op.source, G.GNTCOPY_source_gref), (op.dest, G.GNTCOPY_dest_gref)):
        st = _other_dom_status(ctx, ptr.domid)
        if st is not None:
            return st
        sides.append((ptr, bool(op.flags & flag)))
    (src, src_gref), (dst, dst_gref) = sides
    mem = ctx.domain.memory
    with gt.lock:
        try:
            if src_gref:
                s_gfn = gt._acquire(src.u.ref, me, readonly=True).gfn
            else:
                s_gfn = src.u.gmfn
            try:
                if dst_gref:
                    d_gfn = gt._acquire(dst.u.ref, me, readonly=False).gfn
                else:
                    d_gfn = dst.u.gmfn
                try:
                    for gfn in (s_gfn, d_gfn):
                        if not mem.is_ram(gfn << 12, PAGE_SIZE):
                            return G.GNTST_bad_page
                    _check_span(src.offset, op.len)
                    _check_span(dst.offset, op.len)
                    data = mem.read((s_gfn << 12) + src.offset, op.len)
                    mem.write((d_gfn << 12) + dst.offset, data)
                finally:
                    if dst_gref:
                        gt._release(dst.u.ref, readonly=False)
            finally:
                if src_gref:
                    gt._release(src.u.ref, readonly=True)
        except GrantError as e:
            return e.status
    return G.GNTST_okay


def do_grant_table_op(ctx: HypercallContext) -> int:
    gt = guest_gnttab(ctx.domain)
    if gt is None:
        return -E.ENOSYS
    cmd, uop, count = ctx.sarg(0), ctx.arg(1), ctx.sarg(2)
    g = ctx.guest
    if count < 0:
        return -E.EINVAL
    if cmd in (G.GNTTABOP_setup_table, G.GNTTABOP_query_size, G.GNTTABOP_set_version,
               G.GNTTABOP_get_version) and count != 1:
        return -E.EINVAL  # as Xen: these take exactly one argument
    if cmd == G.GNTTABOP_setup_table:
        _setup_table(ctx, gt, uop)
        return 0
    if cmd == G.GNTTABOP_query_size:
        _query_size(ctx, gt, uop)
        return 0
    if cmd == G.GNTTABOP_copy:
        size = ctypes.sizeof(G.gnttab_copy)
        for i in range(count):
            if not ctx.domain.preempt_check(ctx.vcpu):  # pause waits no longer than one op
                return -E.EINTR
            op = g.read_struct(uop + i * size, G.gnttab_copy)
            op.status = _copy_one(ctx, gt, op)
            g.write_struct(uop + i * size, op)
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
        rc = 0
        if sv.version not in (1, 2):
            rc = -E.EINVAL
        elif sv.version == 2:
            rc = -E.ENOSYS  # v2 not offered: behave as before set_version existed
        sv.version = gt.version
        g.write_struct(uop, sv)
        return rc
    return -E.ENOSYS


def add_to_physmap_grant_table(d: Domain, idx: int, gfn: int) -> int:
    """XENMEM_add_to_physmap, space XENMAPSPACE_grant_table."""
    gt = guest_gnttab(d)
    if gt is None:
        return -E.EOPNOTSUPP
    return gt.map_frame(idx, gfn)
