"""memory_op: the guest's view of its memory (map, reservations, physmap)."""

from __future__ import annotations

import struct

from .grant_table import add_to_physmap_grant_table
from .hypercall import HypercallContext
from .public import errno as E
from .public import memory as M
from .shared_info import map_shared_info
from .xsm import target_error

MEMOP_CMD_MASK = 0x3F


def do_memory_op(ctx: HypercallContext) -> int:
    cmd, arg = ctx.arg(0) & MEMOP_CMD_MASK, ctx.arg(1)
    d, g = ctx.domain, ctx.guest
    mem = d.memory
    if cmd == M.XENMEM_memory_map:
        mmap = g.read_struct(arg, M.xen_memory_map)
        entries = mem.e820()
        n = min(mmap.nr_entries, len(entries))
        g.write(mmap.buffer, b"".join(struct.pack("<QQI", *e) for e in entries[:n]))
        mmap.nr_entries = n
        g.write_struct(arg, mmap)
        return 0
    if cmd == M.XENMEM_set_memory_map:
        return -E.EPERM  # only the toolstack (a privileged domain) sets a domain's map
    if cmd in (M.XENMEM_maximum_ram_page, M.XENMEM_maximum_gpfn):
        return mem.max_gpfn
    if cmd in (M.XENMEM_current_reservation, M.XENMEM_maximum_reservation):
        if err := target_error(d, g.read_u16(arg)):
            return err
        size = mem.size if cmd == M.XENMEM_current_reservation else d.max_memory
        return size // 4096
    if cmd == M.XENMEM_add_to_physmap:
        xatp = g.read_struct(arg, M.xen_add_to_physmap)
        if err := target_error(d, xatp.domid):
            return err
        if xatp.space == M.XENMAPSPACE_grant_table:
            return add_to_physmap_grant_table(d, xatp.idx, xatp.gpfn)
        if xatp.space != M.XENMAPSPACE_shared_info:
            return -E.EOPNOTSUPP
        if xatp.idx != 0:
            return -E.EINVAL
        if not mem.is_ram(xatp.gpfn << 12, 4096):
            return -E.EINVAL
        map_shared_info(d, xatp.gpfn)
        return 0
    return -E.ENOSYS
