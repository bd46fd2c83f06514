"""memory_op: the guest's view of its memory (map, reservations, physmap), as Xen's
common/memory.c and arch/x86/mm.c answer an HVM/PVH guest, for 64-bit and 32-bit callers
(the compat twins of public/memory.py are picked by GuestAccess.read_struct).

Long operations (reservations, physmap ranges and batches) check `preempt_check` between
extents, where Xen would preempt with a continuation: pausing the domain parks the vCPU
there and the operation resumes; a dying domain ends it with the extents done so far.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct

from .grant_table import add_to_physmap_grant_table
from .guest_access import GuestFault
from .hypercall import HypercallContext
from .memory import E820MAX, GuestMemory
from .p2m import PAGE_SHIFT, P2MError, Page
from .public import errno as E
from .public import memory as M
from .public.xen import DOMID_SELF
from .shared_info import map_shared_info
from .xsm import target_error

MEMOP_CMD_MASK = M.MEMOP_CMD_MASK
DOMU_MAX_ORDER = 9  # CONFIG_DOMU_MAX_ORDER on x86: the largest extent a domU may ask for
E820_ENTRY = struct.Struct("<QQI")  # struct e820entry (packed), the same for 32-bit guests


def _host_max_page() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


# --- the shared info page ---------------------------------------------------------------


def shared_info_page(d) -> Page:
    """The domain's shared info page: a pool page from the first XENMAPSPACE_shared_info
    on (Xen allocates it at domain creation; until the guest maps it, event channels keep
    their bits in a private copy, which map_shared_info copies in)."""
    mem: GuestMemory = d.memory
    page = getattr(mem, "shared_info_page", None)
    if page is None:
        page = mem.alloc_page("shared_info")
        page.on_unmap = lambda p, gfn: _shared_info_unmapped(d, p)
        mem.shared_info_page = page
    return page


def _shared_info_unmapped(d, page: Page) -> None:
    """The guest replaced or removed its shared info page: Xen's page lives on, unseen; here
    the event channels go back to their private copy, which starts as the page was."""
    ev = d.evtchn
    with ev.host.lock if ev is not None else contextlib.nullcontext():
        if ev is not None and hasattr(ev, "shadow"):
            ctypes.memmove(ev.shadow, d.memory.hva + page.offset, 4096)
        d.shared_info_gpa = None


def _map_shared_info(d, gfn: int) -> int:
    mem: GuestMemory = d.memory
    page = shared_info_page(d)
    ev = d.evtchn
    with mem.p2m.lock, ev.host.lock if ev is not None else contextlib.nullcontext():
        try:
            mem.p2m.map_page(gfn, page)
        except P2MError as e:
            return -e.errno
        if d.shared_info_gpa is not None:
            d.shared_info_gpa = gfn << PAGE_SHIFT  # moved, with its contents
        map_shared_info(d, gfn)
    return 0


# --- XENMEM_add_to_physmap ---------------------------------------------------------------


def add_to_physmap_one(d, space: int, idx: int, gfn: int) -> int:
    """Xen's xenmem_add_to_physmap_one for an HVM domain (0 or -errno)."""
    mem: GuestMemory = d.memory
    try:
        mem.p2m.check_gfn(gfn)
    except P2MError as e:
        return -e.errno
    if space == M.XENMAPSPACE_shared_info:
        return _map_shared_info(d, gfn) if idx == 0 else -E.EINVAL
    if space == M.XENMAPSPACE_grant_table:
        return add_to_physmap_grant_table(d, idx, gfn)
    if space == M.XENMAPSPACE_gmfn:
        return mem.p2m.move_ram(idx, gfn)
    return -E.EINVAL  # no such page in that space (Xen: INVALID_MFN)


def _add_to_physmap(ctx: HypercallContext, arg: int, start: int) -> int:
    d, g = ctx.domain, ctx.guest
    if start > 0xFFFF:
        return -E.EDOM
    xatp = g.read_struct(arg, M.xen_add_to_physmap)
    if xatp.space == M.XENMAPSPACE_gmfn_foreign:
        return -E.ENOSYS  # only through add_to_physmap_batch
    if err := target_error(d, xatp.domid):
        return err
    if xatp.space == M.XENMAPSPACE_dev_mmio:
        return -E.EACCES  # the hardware domain's, for itself only
    if xatp.space != M.XENMAPSPACE_gmfn_range:
        return add_to_physmap_one(d, xatp.space, xatp.idx, xatp.gpfn)
    if xatp.size < start:
        return -E.EILSEQ
    for k in range(start, xatp.size):
        if k != start and not d.preempt_check(ctx.vcpu):
            return -E.EINTR
        rc = add_to_physmap_one(d, M.XENMAPSPACE_gmfn, xatp.idx + k, xatp.gpfn + k)
        if rc < 0:
            return rc
    return 0


def _add_to_physmap_batch(ctx: HypercallContext, arg: int, start: int) -> int:
    d, g = ctx.domain, ctx.guest
    if start > 0xFFFF:
        return -E.EDOM
    b = g.read_struct(arg, M.xen_add_to_physmap_batch)
    if b.space == M.XENMAPSPACE_gmfn_range:
        return -E.EOPNOTSUPP
    if err := target_error(d, b.domid):
        return err
    if b.space == M.XENMAPSPACE_dev_mmio:
        return -E.EACCES
    if b.size < start:
        return -E.EILSEQ
    w = g.word_size
    for k in range(start, b.size):
        if k != start and not d.preempt_check(ctx.vcpu):
            return -E.EINTR
        idx = g.read_words(b.idxs + k * w, 1)[0]
        gpfn = g.read_words(b.gpfns + k * w, 1)[0]
        if b.space == M.XENMAPSPACE_gmfn_foreign:
            fd = b.u.foreign_domid
            rc = -E.EINVAL if fd in (DOMID_SELF, d.domid) else (target_error(d, fd) or -E.EINVAL)
        else:
            rc = add_to_physmap_one(d, b.space, idx, gpfn)
        g.write(b.errs + k * 4, struct.pack("<i", rc))
    return 0


def _remove_from_physmap(ctx: HypercallContext, arg: int) -> int:
    d, g = ctx.domain, ctx.guest
    xrfp = g.read_struct(arg, M.xen_remove_from_physmap)
    if err := target_error(d, xrfp.domid):
        return err
    p2m = d.memory.p2m
    with p2m.lock:
        if p2m.lookup(xrfp.gpfn) is None:
            return -E.ENOENT
        p2m.remove(xrfp.gpfn, free_ram=False)  # RAM stays the domain's, unmapped (as Xen)
    return 0


# --- reservations ----------------------------------------------------------------------------


def _reservation(ctx: HypercallContext, op: int, arg: int, start: int) -> int:
    """increase/decrease_reservation, populate_physmap: the number of extents done (Xen
    reports every failure this way, never as an error code)."""
    d, g = ctx.domain, ctx.guest
    mem: GuestMemory = d.memory
    p2m = mem.p2m
    try:
        r = g.read_struct(arg, M.xen_memory_reservation)
    except GuestFault:
        return start
    nr = r.nr_extents
    if nr > (0xFFFFFFFF >> M.MEMOP_EXTENT_SHIFT) or start >= nr:
        return start
    if target_error(d, r.domid):
        return start
    bits = r.mem_flags & 0xFF
    if bits and bits <= PAGE_SHIFT:
        return start
    order = r.extent_order
    if order > DOMU_MAX_ORDER:
        return start
    if op == M.XENMEM_populate_physmap and r.mem_flags & M.XENMEMF_populate_on_demand:
        return start  # populate-on-demand on oneself is refused
    n = 1 << order
    w = g.word_size
    for i in range(start, nr):
        if i != start and not d.preempt_check(ctx.vcpu):
            return i
        if op == M.XENMEM_increase_reservation:
            # A translated guest learns no frame numbers: the pages are the domain's but
            # appear nowhere (Linux uses populate_physmap).
            with p2m.lock:
                if p2m.tot_pages + n > mem.max_pages:
                    return i
                p2m.orphans += n
            continue
        try:
            gfn = g.read_words(r.extent_start + i * w, 1)[0]
        except GuestFault:
            return i
        if op == M.XENMEM_decrease_reservation:
            for j in range(n):
                if not p2m.release(gfn + j):
                    return i
            continue
        with p2m.lock:  # populate_physmap
            if p2m.tot_pages + n > mem.max_pages:
                return i
            try:
                for j in range(n):
                    p2m.check_gfn(gfn + j)
            except P2MError:
                return i
            for j in range(n):
                if not p2m.populate(gfn + j):
                    return i
    return nr


# --- the memory map ----------------------------------------------------------------------


def _memory_map(ctx: HypercallContext, arg: int) -> int:
    g, mem = ctx.guest, ctx.domain.memory
    mmap = g.read_struct(arg, M.xen_memory_map)
    entries = mem.e820()
    if not entries:
        return -E.ENOSYS  # no map set: the guest falls back to its own idea
    n = min(mmap.nr_entries, len(entries))
    g.write(mmap.buffer, b"".join(E820_ENTRY.pack(*e) for e in entries[:n]))
    mmap.nr_entries = n
    g.write_struct(arg, mmap)
    return 0


def _set_memory_map(ctx: HypercallContext, arg: int) -> int:
    """Xen lets a domain set its own map (XSM_TARGET), which is what XENMEM_memory_map
    then returns; the toolstack set the one it booted with."""
    d, g = ctx.domain, ctx.guest
    fmap = g.read_struct(arg, M.xen_foreign_memory_map)
    nr = fmap.map.nr_entries
    if nr > E820MAX:
        return -E.EINVAL
    if err := target_error(d, fmap.domid):
        return err
    raw = g.read(fmap.map.buffer, nr * E820_ENTRY.size) if nr else b""
    d.memory.set_e820([E820_ENTRY.unpack_from(raw, i * E820_ENTRY.size) for i in range(nr)])
    return 0


# --- the hypercall ---------------------------------------------------------------------------


def do_memory_op(ctx: HypercallContext) -> int:
    cmd = ctx.arg(0) & (0xFFFFFFFF if ctx.compat else (1 << 64) - 1)
    op, start, arg = cmd & MEMOP_CMD_MASK, cmd >> M.MEMOP_EXTENT_SHIFT, ctx.arg(1)
    d = ctx.domain
    mem: GuestMemory = d.memory
    if op in (M.XENMEM_increase_reservation, M.XENMEM_decrease_reservation,
              M.XENMEM_populate_physmap):
        return _reservation(ctx, op, arg, start)
    if op == M.XENMEM_add_to_physmap:
        return _add_to_physmap(ctx, arg, start)
    if op == M.XENMEM_add_to_physmap_batch:
        return _add_to_physmap_batch(ctx, arg, start)
    if op in (M.XENMEM_machine_memory_map, M.XENMEM_machphys_mapping):
        return -E.ENOSYS  # not for HVM guests (hvm_memory_op)
    if start:
        # Xen: -EINVAL for the common ops that take no continuation; the arch ones
        # (memory_map, set_memory_map) see the whole cmd and know no such number.
        return -E.ENOSYS if op in (M.XENMEM_memory_map, M.XENMEM_set_memory_map) else -E.EINVAL
    if op == M.XENMEM_memory_map:
        return _memory_map(ctx, arg)
    if op == M.XENMEM_set_memory_map:
        return _set_memory_map(ctx, arg)
    if op == M.XENMEM_remove_from_physmap:
        return _remove_from_physmap(ctx, arg)
    if op == M.XENMEM_get_vnumainfo:
        from .vnuma import get_vnumainfo
        return get_vnumainfo(ctx, arg)
    if op == M.XENMEM_maximum_ram_page:
        return _host_max_page()
    if op in (M.XENMEM_current_reservation, M.XENMEM_maximum_reservation,
              M.XENMEM_maximum_gpfn):
        if err := target_error(d, ctx.guest.read_u16(arg)):
            return err
        if op == M.XENMEM_current_reservation:
            return mem.tot_pages
        if op == M.XENMEM_maximum_reservation:
            return mem.max_pages
        return mem.max_gpfn
    return -E.ENOSYS
