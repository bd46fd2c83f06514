"""xen/memory.h: XENMEM_* sub-ops and their argument structs."""

from __future__ import annotations

import ctypes

from . import XenStruct, domid_t, guest_handle, u16, xen_pfn_t, xen_ulong_t

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
XENMEM_remove_from_physmap = 15

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
