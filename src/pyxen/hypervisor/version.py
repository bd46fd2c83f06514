"""xen_version: what Xen this is (4.17, from pyxen's constants)."""

from __future__ import annotations

import ctypes

from .. import XEN_EXTRAVERSION, XEN_MAJOR, XEN_MINOR, __version__
from . import features
from .hypercall import HypercallContext
from .public import errno as E
from .public import version as V

CAPABILITIES = "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"
HYPERVISOR_VIRT_START = 0xFFFF800000000000
# Xen 4.17 gives a 32-bit HVM caller its domain's hv_compat_vstart, which is ~0u for HVM
# domains (arch_domain_create): meaningless, as is the 64-bit value, to a PVH guest.
HVM_COMPAT_VIRT_START = 0xFFFFFFFF


def _cstr(s: str, size: int) -> bytes:
    b = s.encode()[: size - 1]
    return b + b"\0" * (size - len(b))


def do_xen_version(ctx: HypercallContext) -> int:
    cmd, arg = ctx.sarg(0), ctx.arg(1)
    if cmd == V.XENVER_version:  # the hot one (a guest's "am I on Xen" probe): no pointer
        return (XEN_MAJOR << 16) | XEN_MINOR
    if cmd == V.XENVER_pagesize:
        return 4096
    g = ctx.guest
    if cmd == V.XENVER_extraversion:
        g.write(arg, _cstr(XEN_EXTRAVERSION, V.XEN_EXTRAVERSION_LEN))
    elif cmd == V.XENVER_compile_info:
        info = V.xen_compile_info(compiler=f"pyxen {__version__}".encode(),
                                  compile_by=b"pyxen", compile_domain=b"",
                                  compile_date=b"")
        g.write_struct(arg, info)
    elif cmd == V.XENVER_capabilities:
        g.write(arg, _cstr(CAPABILITIES, V.XEN_CAPABILITIES_INFO_LEN))
    elif cmd == V.XENVER_changeset:
        g.write(arg, _cstr(f"pyxen {__version__}", V.XEN_CHANGESET_INFO_LEN))
    elif cmd == V.XENVER_platform_parameters:
        g.write_struct(arg, g.new_struct(
            V.xen_platform_parameters,
            virt_start=HVM_COMPAT_VIRT_START if ctx.compat else HYPERVISOR_VIRT_START))
    elif cmd == V.XENVER_get_features:
        fi = g.read_struct(arg, V.xen_feature_info)
        if fi.submap_idx >= features.XENFEAT_NR_SUBMAPS:
            return -E.EINVAL
        fi.submap = features.submap(ctx.domain, fi.submap_idx)
        g.write_struct(arg, fi)
    elif cmd == V.XENVER_pagesize:
        return 4096
    elif cmd == V.XENVER_guest_handle:
        g.write(arg, ctx.domain.uuid.bytes)
    elif cmd == V.XENVER_commandline:
        # an unprivileged domain may not read Xen's command line: Xen's XSM answer
        g.write(arg, _cstr("<denied>", V.XEN_COMMANDLINE_LEN))
    elif cmd == V.XENVER_build_id:
        return -E.EPERM
    else:
        return -E.ENOSYS
    return 0


assert ctypes.sizeof(V.xen_compile_info) == 144
