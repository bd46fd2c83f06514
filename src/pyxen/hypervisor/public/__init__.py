"""ctypes mirrors of Xen 4.17's public headers (/usr/include/xen), one module per header.

Every struct class carries `_xen_c_type_` (the C type name) and `_xen_header_` (the header to
include), and uses the C member names, so its layout can be checked against the C compiler.
"""

from __future__ import annotations

import ctypes

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
i8, i32, i64 = ctypes.c_int8, ctypes.c_int32, ctypes.c_int64
xen_ulong_t = ctypes.c_uint64  # unsigned long on x86_64
xen_pfn_t = ctypes.c_uint64
domid_t = ctypes.c_uint16
guest_handle = ctypes.c_uint64  # XEN_GUEST_HANDLE(...) is a struct holding one pointer


class XenStruct(ctypes.Structure):
    """Base of the mirrors: little-endian, natural C alignment, as on x86_64."""

    _xen_c_type_ = ""
    _xen_header_ = ""


class XenUnion(ctypes.Union):
    _xen_c_type_ = ""
    _xen_header_ = ""


def all_structs() -> list[type]:
    """Every mirrored struct of every public module (for the layout checks)."""
    import importlib
    import pkgutil

    out: list[type] = []
    for mod in pkgutil.iter_modules(__path__):
        m = importlib.import_module(f"{__name__}.{mod.name}")
        for obj in vars(m).values():
            if (isinstance(obj, type) and issubclass(obj, XenStruct | XenUnion)
                    and obj.__dict__.get("_xen_c_type_") and obj.__module__ == m.__name__):
                out.append(obj)
    return out
