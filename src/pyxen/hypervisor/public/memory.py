"""xen/memory.h: XENMEM_* sub-ops and their argument structs."""

from __future__ import annotations

import ctypes

from . import (
    XenStruct,
    XenStruct32,
    XenUnion,
    compat_handle,
    compat_of,
    compat_pfn_t,
    compat_ulong_t,
    domid_t,
    guest_handle,
    u16,
    xen_pfn_t,
    xen_ulong_t,
)

XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_machphys_mfn_list = 5
XENMEM_populate_physmap = 6
XENMEM_add_to_physmap = 7
XENMEM_memory_map = 9
XENMEM_machine_memory_map = 10
XENMEM_set_memory_map = 13
XENMEM_maximum_gpfn = 14
XENMEM_exchange = 11
XENMEM_machphys_mapping = 12
XENMEM_remove_from_physmap = 15
XENMEM_claim_pages = 24
XENMEM_add_to_physmap_batch = 23
XENMEM_get_vnumainfo = 26

MEMOP_EXTENT_SHIFT = 6  # cmd's upper bits: where a continued operation resumes
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1
XENMEMF_populate_on_demand = 1 << 16
XENMAPIDX_grant_table_status = 0x80000000

XENMAPSPACE_shared_info = 0
XENMAPSPACE_grant_table = 1
XENMAPSPACE_gmfn = 2
XENMAPSPACE_gmfn_range = 3
XENMAPSPACE_gmfn_foreign = 4
XENMAPSPACE_dev_mmio = 5

E820_RAM = 1
E820_RESERVED = 2
E820_ENTRY_SIZE = 20  # struct e820entry: u64 addr, u64 size, u32 type (packed)


class xen_memory_reservation(XenStruct):
    _xen_c_type_ = "struct xen_memory_reservation"
    _xen_header_ = "xen/memory.h"
    _fields_ = [
        ("extent_start", guest_handle), ("nr_extents", xen_ulong_t),
        ("extent_order", ctypes.c_uint), ("mem_flags", ctypes.c_uint), ("domid", domid_t),
    ]


class xen_add_to_physmap(XenStruct):
    _xen_c_type_ = "struct xen_add_to_physmap"
    _xen_header_ = "xen/memory.h"
    _fields_ = [
        ("domid", domid_t), ("size", u16), ("space", ctypes.c_uint),
        ("idx", xen_ulong_t), ("gpfn", xen_pfn_t),
    ]


class xen_memory_map(XenStruct):
    _xen_c_type_ = "struct xen_memory_map"
    _xen_header_ = "xen/memory.h"
    _fields_ = [("nr_entries", ctypes.c_uint), ("buffer", guest_handle)]


class xen_foreign_memory_map(XenStruct):
    _xen_c_type_ = "struct xen_foreign_memory_map"
    _xen_header_ = "xen/memory.h"
    _fields_ = [("domid", domid_t), ("map", xen_memory_map)]


@compat_of(xen_memory_reservation)
class compat_memory_reservation(XenStruct32):
    _fields_ = [
        ("extent_start", compat_handle), ("nr_extents", compat_ulong_t),
        ("extent_order", ctypes.c_uint), ("mem_flags", ctypes.c_uint), ("domid", domid_t),
    ]


@compat_of(xen_add_to_physmap)
class compat_add_to_physmap(XenStruct32):
    _fields_ = [
        ("domid", domid_t), ("size", u16), ("space", ctypes.c_uint),
        ("idx", compat_ulong_t), ("gpfn", compat_pfn_t),
    ]


@compat_of(xen_memory_map)
class compat_memory_map(XenStruct32):
    _fields_ = [("nr_entries", ctypes.c_uint), ("buffer", compat_handle)]


@compat_of(xen_foreign_memory_map)
class compat_foreign_memory_map(XenStruct32):
    _fields_ = [("domid", domid_t), ("map", compat_memory_map)]


class xen_add_to_physmap_batch_extra(XenUnion):
    _xen_c_type_ = "union xen_add_to_physmap_batch_extra"
    _xen_header_ = "xen/memory.h"
    _fields_ = [("foreign_domid", domid_t), ("res0", u16)]


class xen_add_to_physmap_batch(XenStruct):
    _xen_c_type_ = "struct xen_add_to_physmap_batch"
    _xen_header_ = "xen/memory.h"
    _fields_ = [
        ("domid", domid_t), ("space", u16), ("size", u16),
        ("u", xen_add_to_physmap_batch_extra),
        ("idxs", guest_handle), ("gpfns", guest_handle), ("errs", guest_handle),
    ]


@compat_of(xen_add_to_physmap_batch)
class compat_add_to_physmap_batch(XenStruct32):
    _fields_ = [
        ("domid", domid_t), ("space", u16), ("size", u16),
        ("u", xen_add_to_physmap_batch_extra),
        ("idxs", compat_handle), ("gpfns", compat_handle), ("errs", compat_handle),
    ]


class xen_remove_from_physmap(XenStruct):
    _xen_c_type_ = "struct xen_remove_from_physmap"
    _xen_header_ = "xen/memory.h"
    _fields_ = [("domid", domid_t), ("gpfn", xen_pfn_t)]


@compat_of(xen_remove_from_physmap)
class compat_remove_from_physmap(XenStruct32):
    _fields_ = [("domid", domid_t), ("gpfn", compat_pfn_t)]


class xen_vmemrange(XenStruct):
    _xen_c_type_ = "struct xen_vmemrange"
    _xen_header_ = "xen/memory.h"
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("flags", ctypes.c_uint), ("nid", ctypes.c_uint)]


class xen_vnuma_topology_info(XenStruct):
    """The three handles sit in unions with a uint64_t pad, so the layout is the same
    for 32-bit guests (no compat twin); a 32-bit caller's handle is the low half."""

    _xen_c_type_ = "struct xen_vnuma_topology_info"
    _xen_header_ = "xen/memory.h"
    _fields_ = [("domid", domid_t), ("pad", u16), ("nr_vnodes", ctypes.c_uint),
                ("nr_vcpus", ctypes.c_uint), ("nr_vmemranges", ctypes.c_uint),
                ("vdistance", ctypes.c_uint64), ("vcpu_to_vnode", ctypes.c_uint64),
                ("vmemrange", ctypes.c_uint64)]
