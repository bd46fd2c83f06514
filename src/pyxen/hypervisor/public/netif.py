"""xen/io/netif.h: the PV network rings (netfront <-> netback), their flags and features.

Every member is 8-, 16- or 32-bit, so the x86_32 and x86_64 layouts are the same (the
layout test checks that with -m32): one mirror serves both ABIs, no compat twins.
Each ring is one shared page (xen/io/ring.h): a 64-byte header, then a power-of-two array
of request/response slots (256 for both rings with 4 KiB pages).
"""

from __future__ import annotations

import ctypes

from . import XenStruct, XenUnion, u8, u16, u32

i16 = ctypes.c_int16
grant_ref_t = u32
RING_IDX = u32

HEADER = "xen/io/netif.h"

XEN_NETIF_NR_SLOTS_MIN = 18
XEN_NETIF_MAX_TX_SIZE = 0xFFFF

NETTXF_csum_blank = 1 << 0
NETTXF_data_validated = 1 << 1
NETTXF_more_data = 1 << 2
NETTXF_extra_info = 1 << 3

NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4

XEN_NETIF_EXTRA_TYPE_NONE = 0
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_MAX = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0

XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1


class netif_tx_request(XenStruct):
    _xen_c_type_ = "struct netif_tx_request"
    _xen_header_ = HEADER
    _fields_ = [("gref", grant_ref_t), ("offset", u16), ("flags", u16), ("id", u16),
                ("size", u16)]


class netif_extra_info_gso(XenStruct):
    _fields_ = [("size", u16), ("type", u8), ("pad", u8), ("features", u16)]


class netif_extra_info_mcast(XenStruct):
    _fields_ = [("addr", u8 * 6)]


class netif_extra_info_hash(XenStruct):
    _fields_ = [("type", u8), ("algorithm", u8), ("value", u8 * 4)]


class netif_extra_info_u(XenUnion):
    _fields_ = [("gso", netif_extra_info_gso), ("mcast", netif_extra_info_mcast),
                ("hash", netif_extra_info_hash), ("pad", u16 * 3)]


class netif_extra_info(XenStruct):
    _xen_c_type_ = "struct netif_extra_info"
    _xen_header_ = HEADER
    _fields_ = [("type", u8), ("flags", u8), ("u", netif_extra_info_u)]


class netif_tx_response(XenStruct):
    _xen_c_type_ = "struct netif_tx_response"
    _xen_header_ = HEADER
    _fields_ = [("id", u16), ("status", i16)]


class netif_rx_request(XenStruct):
    _xen_c_type_ = "struct netif_rx_request"
    _xen_header_ = HEADER
    _fields_ = [("id", u16), ("pad", u16), ("gref", grant_ref_t)]


class netif_rx_response(XenStruct):
    _xen_c_type_ = "struct netif_rx_response"
    _xen_header_ = HEADER
    _fields_ = [("id", u16), ("offset", u16), ("flags", u16), ("status", i16)]


class sring_pvt(XenUnion):
    _fields_ = [("pvt_pad", u8 * 4)]


class netif_tx_sring_entry(XenUnion):
    _xen_c_type_ = "union netif_tx_sring_entry"
    _xen_header_ = HEADER
    _fields_ = [("req", netif_tx_request), ("rsp", netif_tx_response)]


class netif_rx_sring_entry(XenUnion):
    _xen_c_type_ = "union netif_rx_sring_entry"
    _xen_header_ = HEADER
    _fields_ = [("req", netif_rx_request), ("rsp", netif_rx_response)]


class netif_tx_sring(XenStruct):
    """ring.h's shared ring header (DEFINE_RING_TYPES), then ring[]."""

    _xen_c_type_ = "struct netif_tx_sring"
    _xen_header_ = HEADER
    _fields_ = [("req_prod", RING_IDX), ("req_event", RING_IDX), ("rsp_prod", RING_IDX),
                ("rsp_event", RING_IDX), ("pvt", sring_pvt), ("__pad", u8 * 44),
                ("ring", netif_tx_sring_entry * 1)]


class netif_rx_sring(XenStruct):
    _xen_c_type_ = "struct netif_rx_sring"
    _xen_header_ = HEADER
    _fields_ = [("req_prod", RING_IDX), ("req_event", RING_IDX), ("rsp_prod", RING_IDX),
                ("rsp_event", RING_IDX), ("pvt", sring_pvt), ("__pad", u8 * 44),
                ("ring", netif_rx_sring_entry * 1)]


def ring_size(page_size: int, entry: type) -> int:
    """__RING_SIZE: the largest power of two of entries after the header."""
    n = (page_size - netif_tx_sring.ring.offset) // ctypes.sizeof(entry)
    return 1 << (n.bit_length() - 1)


NET_TX_RING_SIZE = ring_size(4096, netif_tx_sring_entry)
NET_RX_RING_SIZE = ring_size(4096, netif_rx_sring_entry)
