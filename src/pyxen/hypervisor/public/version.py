"""xen/version.h: XENVER_* sub-ops and their argument structs."""

from __future__ import annotations

import ctypes

from . import XenStruct, XenStruct32, compat_of, compat_ulong_t, u32, xen_ulong_t

XENVER_version = 0
XENVER_extraversion = 1
XENVER_compile_info = 2
XENVER_capabilities = 3
XENVER_changeset = 4
XENVER_platform_parameters = 5
XENVER_get_features = 6
XENVER_pagesize = 7
XENVER_guest_handle = 8
XENVER_commandline = 9
XENVER_build_id = 10

XEN_EXTRAVERSION_LEN = 16
XEN_CAPABILITIES_INFO_LEN = 1024
XEN_CHANGESET_INFO_LEN = 64
XEN_COMMANDLINE_LEN = 1024


class xen_compile_info(XenStruct):
    _xen_c_type_ = "struct xen_compile_info"
    _xen_header_ = "xen/version.h"
    _fields_ = [
        ("compiler", ctypes.c_char * 64), ("compile_by", ctypes.c_char * 16),
        ("compile_domain", ctypes.c_char * 32), ("compile_date", ctypes.c_char * 32),
    ]


class xen_platform_parameters(XenStruct):
    _xen_c_type_ = "struct xen_platform_parameters"
    _xen_header_ = "xen/version.h"
    _fields_ = [("virt_start", xen_ulong_t)]


@compat_of(xen_platform_parameters)
class compat_platform_parameters(XenStruct32):
    _fields_ = [("virt_start", compat_ulong_t)]


class xen_feature_info(XenStruct):
    _xen_c_type_ = "struct xen_feature_info"
    _xen_header_ = "xen/version.h"
    _fields_ = [("submap_idx", ctypes.c_uint), ("submap", u32)]
