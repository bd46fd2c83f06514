"""xen/grant_table.h: v1 and v2 grant entries, GTF_* flags, GNTTABOP_* and GNTST_* codes.

Structs whose x86_32 layout differs (a xen_pfn_t or a guest handle inside) have their
`compat_*` twin right after them; the others are identical for 32-bit guests (Xen's
CHECK_* list in common/compat/grant_table.c).
"""

from __future__ import annotations

import ctypes

from . import (
    XenStruct,
    XenStruct32,
    XenUnion,
    XenUnion32,
    compat_handle,
    compat_of,
    compat_pfn_t,
    domid_t,
    guest_handle,
    u16,
    u32,
    u64,
    xen_pfn_t,
)

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
GNTTAB_NR_RESERVED_ENTRIES = 8

GNTTAB_CACHE_CLEAN = 1 << 0
GNTTAB_CACHE_INVAL = 1 << 1
GNTTAB_CACHE_SOURCE_GREF = 1 << 31


class grant_entry_v1(XenStruct):
    _xen_c_type_ = "struct grant_entry_v1"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("flags", u16), ("domid", domid_t), ("frame", u32)]


GRANT_ENTRY_V1_SIZE = 8
ENTRIES_PER_FRAME_V1 = 4096 // GRANT_ENTRY_V1_SIZE


class grant_entry_header(XenStruct):
    _xen_c_type_ = "struct grant_entry_header"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("flags", u16), ("domid", domid_t)]


class grant_entry_v2_full_page(XenStruct):
    _fields_ = [("hdr", grant_entry_header), ("pad0", u32), ("frame", u64)]


class grant_entry_v2_sub_page(XenStruct):
    _fields_ = [("hdr", grant_entry_header), ("page_off", u16), ("length", u16),
                ("frame", u64)]


class grant_entry_v2_transitive(XenStruct):
    _fields_ = [("hdr", grant_entry_header), ("trans_domid", domid_t), ("pad0", u16),
                ("gref", grant_ref_t)]


class grant_entry_v2(XenUnion):
    """16 bytes in both ABIs (its u64 members sit at offset 8)."""

    _xen_c_type_ = "union grant_entry_v2"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("hdr", grant_entry_header), ("full_page", grant_entry_v2_full_page),
                ("sub_page", grant_entry_v2_sub_page),
                ("transitive", grant_entry_v2_transitive), ("__spacer", u32 * 4)]


grant_status_t = u16
GRANT_ENTRY_V2_SIZE = 16
ENTRIES_PER_FRAME_V2 = 4096 // GRANT_ENTRY_V2_SIZE
STATUS_PER_FRAME = 4096 // 2  # grant_status_t
# v2 entry offsets: header (flags, domid) at 0; sub_page page_off/length at 4/6,
# transitive trans_domid at 4 and gref at 8; full_page/sub_page frame at 8.
V2_PAGE_OFF, V2_LENGTH, V2_TRANS_DOMID, V2_FRAME, V2_TRANS_GREF = 4, 6, 4, 8, 8


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
                ("frame_list", guest_handle)]  # xen_pfn_t[]: 4-byte elements in compat


@compat_of(gnttab_setup_table)
class compat_gnttab_setup_table(XenStruct32):
    _fields_ = [("dom", domid_t), ("nr_frames", u32), ("status", i16),
                ("frame_list", compat_handle)]


class gnttab_copy_ptr_u(XenUnion):
    _fields_ = [("ref", grant_ref_t), ("gmfn", xen_pfn_t)]


class gnttab_copy_ptr(XenStruct):
    _xen_c_type_ = "struct gnttab_copy_ptr"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("u", gnttab_copy_ptr_u), ("domid", domid_t), ("offset", u16)]


class compat_gnttab_copy_ptr_u(XenUnion32):
    _fields_ = [("ref", grant_ref_t), ("gmfn", compat_pfn_t)]


@compat_of(gnttab_copy_ptr)
class compat_gnttab_copy_ptr(XenStruct32):
    _fields_ = [("u", compat_gnttab_copy_ptr_u), ("domid", domid_t), ("offset", u16)]


class gnttab_copy(XenStruct):
    _xen_c_type_ = "struct gnttab_copy"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("source", gnttab_copy_ptr), ("dest", gnttab_copy_ptr), ("len", u16),
                ("flags", u16), ("status", i16)]


@compat_of(gnttab_copy)
class compat_gnttab_copy(XenStruct32):
    _fields_ = [("source", compat_gnttab_copy_ptr), ("dest", compat_gnttab_copy_ptr),
                ("len", u16), ("flags", u16), ("status", i16)]


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


class gnttab_get_status_frames(XenStruct):
    _xen_c_type_ = "struct gnttab_get_status_frames"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("nr_frames", u32), ("dom", domid_t), ("status", i16),
                ("frame_list", guest_handle)]  # uint64_t[] in both ABIs


@compat_of(gnttab_get_status_frames)
class compat_gnttab_get_status_frames(XenStruct32):
    _fields_ = [("nr_frames", u32), ("dom", domid_t), ("status", i16),
                ("frame_list", compat_handle)]


class gnttab_transfer(XenStruct):
    _xen_c_type_ = "struct gnttab_transfer"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("mfn", xen_pfn_t), ("domid", domid_t), ("ref", grant_ref_t),
                ("status", i16)]


@compat_of(gnttab_transfer)
class compat_gnttab_transfer(XenStruct32):
    _fields_ = [("mfn", compat_pfn_t), ("domid", domid_t), ("ref", grant_ref_t),
                ("status", i16)]


class gnttab_unmap_and_replace(XenStruct):
    _xen_c_type_ = "struct gnttab_unmap_and_replace"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("host_addr", u64), ("new_addr", u64), ("handle", grant_handle_t),
                ("status", i16)]


class gnttab_swap_grant_ref(XenStruct):
    _xen_c_type_ = "struct gnttab_swap_grant_ref"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("ref_a", grant_ref_t), ("ref_b", grant_ref_t), ("status", i16)]


class gnttab_cache_flush_a(XenUnion):
    _fields_ = [("dev_bus_addr", u64), ("ref", grant_ref_t)]


class gnttab_cache_flush(XenStruct):
    """Same offsets and size in both ABIs (the union's u64 is at offset 0)."""

    _xen_c_type_ = "struct gnttab_cache_flush"
    _xen_header_ = "xen/grant_table.h"
    _fields_ = [("a", gnttab_cache_flush_a), ("offset", u16), ("length", u16), ("op", u32)]
