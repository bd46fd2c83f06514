"""A domain's virtual NUMA topology (xl.cfg `vnuma=`): Xen's struct vnuma_info (vnodes,
the distance table, each vCPU's vnode, the memory ranges of each vnode) and the
XENMEM_get_vnumainfo sub-op that lets the guest read it. The same layout feeds the ACPI
SRAT/SLIT (arch/x86/acpi.py)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .guest_access import GuestFault
from .hypercall import HypercallContext
from .memory import HIGHMEM_BASE, LOWMEM_TOP
from .public import errno as E
from .public import memory as M
from .xsm import target_error

VMEMRANGE = struct.Struct("<QQII")  # struct xen_vmemrange, the same for 32-bit guests


@dataclass(frozen=True)
class VNuma:
    distances: tuple[tuple[int, ...], ...]  # [from][to]
    vcpu_to_vnode: tuple[int, ...]  # one per possible vCPU
    ranges: tuple[tuple[int, int, int], ...]  # (start, end, vnode): guest-physical
    pnodes: tuple[int, ...] = ()  # the host node of each vnode ((): none asked)

    @property
    def nr_vnodes(self) -> int:
        return len(self.distances)


def build_vnuma(sizes: list[int], distances: list[list[int]], vcpu_to_vnode: list[int],
                pnodes: list[int] | None = None) -> VNuma:
    """Lay the vnodes' memory (bytes each, in vnode order) over the guest's RAM: from 0
    up to the MMIO hole, then from 4 GiB, a vnode split in two where it spans the hole
    (libxl__vnuma_build_vmemrange_pv_generic / _hvm)."""
    n = len(sizes)
    if n == 0 or any(len(row) != n for row in distances):
        raise ValueError("vnuma: a distance table of nr_vnodes x nr_vnodes is needed")
    if any(not 0 <= v < n for v in vcpu_to_vnode):
        raise ValueError("vnuma: vCPU mapped to a vnode that does not exist")
    ranges: list[tuple[int, int, int]] = []
    addr = 0
    for nid, size in enumerate(sizes):
        while size:
            if addr == LOWMEM_TOP:
                addr = HIGHMEM_BASE
            end = addr + size if addr >= HIGHMEM_BASE else min(addr + size, LOWMEM_TOP)
            ranges.append((addr, end, nid))
            size -= end - addr
            addr = end
    return VNuma(tuple(tuple(r) for r in distances), tuple(vcpu_to_vnode), tuple(ranges),
                 tuple(pnodes or ()))


def get_vnumainfo(ctx: HypercallContext, arg: int) -> int:
    """XENMEM_get_vnumainfo (common/memory.c): -EOPNOTSUPP without a topology; the
    counts the domain needs and -ENOBUFS when the guest's arrays are too small; else
    the arrays filled and the counts written back."""
    g = ctx.guest
    t = g.read_struct(arg, M.xen_vnuma_topology_info)
    if t.pad != 0:
        return -E.EINVAL
    if err := target_error(ctx.domain, t.domid):
        return err
    v: VNuma | None = getattr(ctx.domain, "vnuma", None)
    if v is None:
        return -E.EOPNOTSUPP
    nodes, vcpus, nranges = v.nr_vnodes, len(v.vcpu_to_vnode), len(v.ranges)
    if t.nr_vnodes < nodes or t.nr_vcpus < vcpus or t.nr_vmemranges < nranges:
        t.nr_vnodes, t.nr_vcpus, t.nr_vmemranges = nodes, vcpus, nranges
        g.write_struct(arg, t)
        return -E.ENOBUFS
    mask = 0xFFFFFFFF if ctx.compat else (1 << 64) - 1
    try:
        g.write(t.vmemrange & mask,
                b"".join(VMEMRANGE.pack(s, e, 0, nid) for s, e, nid in v.ranges))
        g.write(t.vdistance & mask, struct.pack(f"<{nodes * nodes}I",
                                                *(d for row in v.distances for d in row)))
        g.write(t.vcpu_to_vnode & mask, struct.pack(f"<{vcpus}I", *v.vcpu_to_vnode))
    except GuestFault:
        return -E.EFAULT
    t.nr_vnodes, t.nr_vcpus, t.nr_vmemranges = nodes, vcpus, nranges
    g.write_struct(arg, t)
    return 0
