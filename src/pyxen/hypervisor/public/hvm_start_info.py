"""xen/arch-x86/hvm/start_info.h: what a PVH guest finds in %ebx at its entry point."""

from __future__ import annotations

from . import XenStruct, u32, u64

XEN_HVM_START_MAGIC_VALUE = 0x336EC578
XEN_HVM_MEMMAP_TYPE_RAM = 1
XEN_HVM_MEMMAP_TYPE_RESERVED = 2
XEN_HVM_MEMMAP_TYPE_ACPI = 3


class hvm_start_info(XenStruct):
    _xen_c_type_ = "struct hvm_start_info"
    _xen_header_ = "xen/arch-x86/hvm/start_info.h"
    _fields_ = [
        ("magic", u32), ("version", u32), ("flags", u32), ("nr_modules", u32),
        ("modlist_paddr", u64), ("cmdline_paddr", u64), ("rsdp_paddr", u64),
        ("memmap_paddr", u64), ("memmap_entries", u32), ("reserved", u32),
    ]


class hvm_modlist_entry(XenStruct):
    _xen_c_type_ = "struct hvm_modlist_entry"
    _xen_header_ = "xen/arch-x86/hvm/start_info.h"
    _fields_ = [("paddr", u64), ("size", u64), ("cmdline_paddr", u64), ("reserved", u64)]


class hvm_memmap_table_entry(XenStruct):
    _xen_c_type_ = "struct hvm_memmap_table_entry"
    _xen_header_ = "xen/arch-x86/hvm/start_info.h"
    _fields_ = [("addr", u64), ("size", u64), ("type", u32), ("reserved", u32)]
