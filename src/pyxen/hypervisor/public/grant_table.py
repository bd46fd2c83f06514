"""xen/grant_table.h: v1 grant entries, GTF_* flags, GNTTABOP_* and GNTST_* codes."""

from __future__ import annotations

import ctypes

from . import XenStruct, XenUnion, domid_t, guest_handle, u16, u32, u64, xen_pfn_t

i16 = ctypes.c_int16

grant_ref_t = u32
grant_handle_t = u32

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_PWT = 1 << 5
GTF_PCD = 1 << 6
GTF_PAT = 1 << 7
GTF_sub_page = 1 << 8
GTF_transfer_committed = 1 << 2
GTF_transfer_completed = 1 << 3

GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11
GNTTABOP_cache_flush = 12

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4

GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13

GNTST_NAMES = {
    0: "okay", -1: "undefined error", -2: "unrecognised domain id",
    -3: "invalid grant reference", -4: "invalid mapping handle",
    -5: "invalid virtual address", -6: "invalid device address",
    -7: "no spare translation slot in the I/O MMU", -8: "permission denied",
    -9: "bad page", -10: "copy arguments cross page boundary",
    -11: "page address size too large", -12: "operation not done; try again",
    -13: "out of space",
}

XENMAPIDX_grant_table_status = 1 << 31


class grant_entry_v1(XenStruct):
    _xen_c_type_ = "struct grant_entry_v1"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("flags", u16), ("domid", domid_t), ("frame", u32)]


GRANT_ENTRY_V1_SIZE = 8
ENTRIES_PER_FRAME_V1 = 4096 // GRANT_ENTRY_V1_SIZE


class gnttab_map_grant_ref(XenStruct):
    _xen_c_type_ = "struct gnttab_map_grant_ref"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("host_addr", u64), ("flags", u32), ("ref", grant_ref_t), ("dom", domid_t),
                ("status", i16), ("handle", grant_handle_t), ("dev_bus_addr", u64)]


class gnttab_unmap_grant_ref(XenStruct):
    _xen_c_type_ = "struct gnttab_unmap_grant_ref"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("host_addr", u64), ("dev_bus_addr", u64), ("handle", grant_handle_t),
                ("status", i16)]


class gnttab_setup_table(XenStruct):
    _xen_c_type_ = "struct gnttab_setup_table"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("dom", domid_t), ("nr_frames", u32), ("status", i16),
                ("frame_list", guest_handle)]


class gnttab_copy_ptr_u(XenUnion):
    _fields_ = [("ref", grant_ref_t), ("gmfn", xen_pfn_t)]


class gnttab_copy_ptr(XenStruct):
    _xen_c_type_ = "struct gnttab_copy_ptr"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("u", gnttab_copy_ptr_u), ("domid", domid_t), ("offset", u16)]


class gnttab_copy(XenStruct):
    _xen_c_type_ = "struct gnttab_copy"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("source", gnttab_copy_ptr), ("dest", gnttab_copy_ptr), ("len", u16),
                ("flags", u16), ("status", i16)]


class gnttab_query_size(XenStruct):
    _xen_c_type_ = "struct gnttab_query_size"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("dom", domid_t), ("nr_frames", u32), ("max_nr_frames", u32),
                ("status", i16)]


class gnttab_set_version(XenStruct):
    _xen_c_type_ = "struct gnttab_set_version"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("version", u32)]


class gnttab_get_version(XenStruct):
    _xen_c_type_ = "struct gnttab_get_version"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("dom", domid_t), ("pad", u16), ("version", u32)]
