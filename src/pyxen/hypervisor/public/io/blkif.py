"""xen/io/blkif.h (with io/ring.h and io/protocols.h): the block ring protocol.

Both ring ABIs are declared: the native (x86_64-abi) layouts and their x86_32-abi twins,
which a 32-bit frontend (GRUB for Xen, a 32-bit Linux) uses: no padding before the
64-bit `id` and 4-byte alignment, so every request is 4 bytes shorter and every response
12 bytes instead of 16. The frontend names its ABI in its `protocol` node.
"""

from __future__ import annotations

import ctypes

from .. import XenStruct, XenStruct32, compat_of, u8, u16, u32, u64

i16 = ctypes.c_int16
grant_ref_t = u32
blkif_vdev_t = u16
blkif_sector_t = u64

XEN_IO_PROTO_ABI_X86_32 = "x86_32-abi"
XEN_IO_PROTO_ABI_X86_64 = "x86_64-abi"
XEN_IO_PROTO_ABI_NATIVE = XEN_IO_PROTO_ABI_X86_64

BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
BLKIF_DISCARD_SECURE = 1 << 0

BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0

VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

SECTOR_SHIFT = 9  # sector_number and first_sect/last_sect count 512-byte sectors
RING_HEADER_SIZE = 64  # req_prod, req_event, rsp_prod, rsp_event, pad (io/ring.h)


class blkif_request_segment(XenStruct):
    _xen_c_type_ = "struct blkif_request_segment"
    _xen_header_ = "xen/io/blkif.h"
    _fields_ = [("gref", grant_ref_t), ("first_sect", u8), ("last_sect", u8), ("_pad", u16)]


class blkif_request(XenStruct):
    _xen_c_type_ = "struct blkif_request"
    _xen_header_ = "xen/io/blkif.h"
    _fields_ = [("operation", u8), ("nr_segments", u8), ("handle", blkif_vdev_t),
                ("id", u64), ("sector_number", blkif_sector_t),
                ("seg", blkif_request_segment * BLKIF_MAX_SEGMENTS_PER_REQUEST)]


@compat_of(blkif_request)
class compat_blkif_request(XenStruct32):
    _fields_ = [("operation", u8), ("nr_segments", u8), ("handle", blkif_vdev_t),
                ("id", u64), ("sector_number", blkif_sector_t),
                ("seg", blkif_request_segment * BLKIF_MAX_SEGMENTS_PER_REQUEST)]


class blkif_request_discard(XenStruct):
    _xen_c_type_ = "struct blkif_request_discard"
    _xen_header_ = "xen/io/blkif.h"
    _fields_ = [("operation", u8), ("flag", u8), ("handle", blkif_vdev_t), ("id", u64),
                ("sector_number", blkif_sector_t), ("nr_sectors", u64)]


@compat_of(blkif_request_discard)
class compat_blkif_request_discard(XenStruct32):
    _fields_ = [("operation", u8), ("flag", u8), ("handle", blkif_vdev_t), ("id", u64),
                ("sector_number", blkif_sector_t), ("nr_sectors", u64)]


class blkif_request_indirect(XenStruct):
    _xen_c_type_ = "struct blkif_request_indirect"
    _xen_header_ = "xen/io/blkif.h"
    _fields_ = [("operation", u8), ("indirect_op", u8), ("nr_segments", u16), ("id", u64),
                ("sector_number", blkif_sector_t), ("handle", blkif_vdev_t),
                ("indirect_grefs", grant_ref_t * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)]


@compat_of(blkif_request_indirect)
class compat_blkif_request_indirect(XenStruct32):
    _fields_ = [("operation", u8), ("indirect_op", u8), ("nr_segments", u16), ("id", u64),
                ("sector_number", blkif_sector_t), ("handle", blkif_vdev_t),
                ("indirect_grefs", grant_ref_t * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST),
                ("_pad", u64)]  # i386's explicit `uint64_t pad` keeps it 64 bytes


class blkif_response(XenStruct):
    _xen_c_type_ = "struct blkif_response"
    _xen_header_ = "xen/io/blkif.h"
    _fields_ = [("id", u64), ("operation", u8), ("status", i16)]


@compat_of(blkif_response)
class compat_blkif_response(XenStruct32):
    _fields_ = [("id", u64), ("operation", u8), ("status", i16)]


class blkif_sring(XenStruct):
    """The shared ring as C declares it: a 64-byte header and (nominally) one entry;
    the real ring runs on to the end of its pages."""

    _xen_c_type_ = "struct blkif_sring"
    _xen_header_ = "xen/io/blkif.h"
    _fields_ = [("req_prod", u32), ("req_event", u32), ("rsp_prod", u32), ("rsp_event", u32),
                ("__pad", u8 * 48), ("ring", u8 * 112)]
    _xen_skip_fields_ = ("__pad",)


@compat_of(blkif_sring)
class compat_blkif_sring(XenStruct32):
    _fields_ = [("req_prod", u32), ("req_event", u32), ("rsp_prod", u32), ("rsp_event", u32),
                ("__pad", u8 * 48), ("ring", u8 * 108)]
    _xen_skip_fields_ = ("__pad",)


def ring_entry_size(compat: bool) -> int:
    """sizeof(union blkif_sring_entry): the larger of request and response."""
    req = compat_blkif_request if compat else blkif_request
    rsp = compat_blkif_response if compat else blkif_response
    return max(ctypes.sizeof(req), ctypes.sizeof(rsp))


def ring_size(nr_pages: int, compat: bool) -> int:
    """__CONST_RING_SIZE: entries that fit after the header, rounded down to a power of 2."""
    n = (nr_pages * 4096 - RING_HEADER_SIZE) // ring_entry_size(compat)
    return 1 << (n.bit_length() - 1) if n else 0
