"""xen/hvm/hvm_vcpu.h: struct vcpu_hvm_context, VCPUOP_initialise's argument for HVM/PVH."""

from __future__ import annotations

from . import XenStruct, XenUnion, u16, u32, u64

VCPU_HVM_MODE_32B = 0
VCPU_HVM_MODE_64B = 1


class vcpu_hvm_x86_32(XenStruct):
    _xen_c_type_ = "struct vcpu_hvm_x86_32"
    _xen_header_ = "xen/hvm/hvm_vcpu.h"
    _fields_ = [(n, u32) for n in (
        "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
        "cr0", "cr3", "cr4", "pad1")] + [("efer", u64)] + [(n, u32) for n in (
        "cs_base", "ds_base", "ss_base", "es_base", "tr_base",
        "cs_limit", "ds_limit", "ss_limit", "es_limit", "tr_limit")] + [(n, u16) for n in (
        "cs_ar", "ds_ar", "ss_ar", "es_ar", "tr_ar")] + [("pad2", u16 * 3)]


class vcpu_hvm_x86_64(XenStruct):
    _xen_c_type_ = "struct vcpu_hvm_x86_64"
    _xen_header_ = "xen/hvm/hvm_vcpu.h"
    _fields_ = [(n, u64) for n in (
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "rip", "rflags",
        "cr0", "cr3", "cr4", "efer")]


class vcpu_hvm_cpu_regs(XenUnion):
    _fields_ = [("x86_32", vcpu_hvm_x86_32), ("x86_64", vcpu_hvm_x86_64)]


class vcpu_hvm_context(XenStruct):
    _xen_c_type_ = "struct vcpu_hvm_context"
    _xen_header_ = "xen/hvm/hvm_vcpu.h"
    _fields_ = [("mode", u32), ("pad", u32), ("cpu_regs", vcpu_hvm_cpu_regs)]
