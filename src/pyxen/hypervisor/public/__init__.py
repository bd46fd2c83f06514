"""ctypes mirrors of Xen 4.17's public headers (/usr/include/xen), one module per header.

Every struct class carries `_xen_c_type_` (the C type name) and `_xen_header_` (the header to
include), and uses the C member names, so its layout can be checked against the C compiler.

32-bit guests (Xen's compat ABI): xen_ulong_t, xen_pfn_t and guest handles are 32 bits and
64-bit members are 4-byte aligned (i386 SysV). A struct whose x86_32 layout differs gets a
twin declared right after it, a `XenStruct32` subclass decorated with `@compat_of(native)`
and named `compat_*` as in Xen; `GuestAccess.read_struct` picks the twin for a 32-bit
caller. A struct without a twin must have the same layout in both ABIs: the layout test
compiles every mirror against the headers with `-m32` as well and checks exactly that.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
i8, i32, i64 = ctypes.c_int8, ctypes.c_int32, ctypes.c_int64
xen_ulong_t = ctypes.c_uint64  # unsigned long on x86_64
xen_pfn_t = ctypes.c_uint64
domid_t = ctypes.c_uint16
guest_handle = ctypes.c_uint64  # XEN_GUEST_HANDLE(...) is a struct holding one pointer
# x86_32 (compat) spellings of the same types
compat_ulong_t = ctypes.c_uint32
compat_pfn_t = ctypes.c_uint32
compat_handle = ctypes.c_uint32


class XenStruct(ctypes.Structure):
    """Base of the mirrors: little-endian, natural C alignment, as on x86_64."""

    _xen_c_type_ = ""
    _xen_header_ = ""


class XenUnion(ctypes.Union):
    _xen_c_type_ = ""
    _xen_header_ = ""


class XenStruct32(ctypes.Structure):
    """Base of the x86_32 (compat) twins: i386 alignment, 64-bit members on 4 bytes.

    Checked by the layout test against the headers compiled with `-m32`.
    """

    _pack_ = 4
    _xen_c_type_ = ""
    _xen_header_ = ""
    _xen_abi_ = "x86_32"


class XenUnion32(ctypes.Union):
    _pack_ = 4
    _xen_c_type_ = ""
    _xen_header_ = ""
    _xen_abi_ = "x86_32"


def compat_of(native: type) -> Callable[[type], type]:
    """Declare the decorated class as `native`'s x86_32 layout (same C type, same fields)."""

    def link(twin: type) -> type:
        native._compat_ = twin  # type: ignore[attr-defined]
        if not twin.__dict__.get("_xen_c_type_"):
            twin._xen_c_type_ = native._xen_c_type_  # type: ignore[attr-defined]
        if not twin.__dict__.get("_xen_header_"):
            twin._xen_header_ = native._xen_header_  # type: ignore[attr-defined]
        return twin

    return link


def layout_for(cls: type, compat: bool) -> type:
    """The class that describes `cls` for a caller of that ABI."""
    return cls.__dict__.get("_compat_", cls) if compat else cls


def all_structs() -> list[type]:
    """Every mirrored struct of every public module (for the layout checks)."""
    import importlib
    import pkgutil

    out: list[type] = []
    for mod in pkgutil.iter_modules(__path__):
        m = importlib.import_module(f"{__name__}.{mod.name}")
        for obj in vars(m).values():
            if (isinstance(obj, type)
                    and issubclass(obj, XenStruct | XenUnion | XenStruct32 | XenUnion32)
                    and obj.__dict__.get("_xen_c_type_") and obj.__module__ == m.__name__):
                out.append(obj)
    return out
