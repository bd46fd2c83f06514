"""xen/arch-x86/xen-x86_64.h, xen/arch-x86/xen.h: a vCPU's register state as the
toolstack sees it (XEN_DOMCTL_getvcpucontext). pyxen writes it into core dumps
(``xl dump-core``: the ``.xen_prstatus`` section, one per vCPU, as libxc's xc_core does)."""

from __future__ import annotations

import ctypes

from . import XenStruct, XenStruct32, compat_of

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

VGCF_I387_VALID = 1 << 0
VGCF_IN_KERNEL = 1 << 2
VGCF_ONLINE = 1 << 5


class cpu_user_regs(XenStruct):
    _xen_c_type_ = "struct cpu_user_regs"
    _xen_header_ = "xen/xen.h"
    _fields_ = [
        ("r15", u64), ("r14", u64), ("r13", u64), ("r12", u64), ("rbp", u64), ("rbx", u64),
        ("r11", u64), ("r10", u64), ("r9", u64), ("r8", u64), ("rax", u64), ("rcx", u64),
        ("rdx", u64), ("rsi", u64), ("rdi", u64), ("error_code", u32), ("entry_vector", u32),
        ("rip", u64), ("cs", u16), ("_pad0", u16 * 1), ("saved_upcall_mask", u8),
        ("_pad1", u8 * 3), ("rflags", u64), ("rsp", u64), ("ss", u16), ("_pad2", u16 * 3),
        ("es", u16), ("_pad3", u16 * 3), ("ds", u16), ("_pad4", u16 * 3),
        ("fs", u16), ("_pad5", u16 * 3), ("gs", u16), ("_pad6", u16 * 3),
    ]


class vcpu_guest_context(XenStruct):
    _xen_c_type_ = "struct vcpu_guest_context"
    _xen_header_ = "xen/xen.h"
    _fields_ = [
        ("fpu_ctxt", u8 * 512), ("flags", u64), ("user_regs", cpu_user_regs),
        ("trap_ctxt", u8 * (16 * 256)),  # struct trap_info[256]
        ("ldt_base", u64), ("ldt_ents", u64), ("gdt_frames", u64 * 16), ("gdt_ents", u64),
        ("kernel_ss", u64), ("kernel_sp", u64), ("ctrlreg", u64 * 8), ("debugreg", u64 * 8),
        ("event_callback_eip", u64), ("failsafe_callback_eip", u64),
        ("syscall_callback_eip", u64), ("vm_assist", u64),
        ("fs_base", u64), ("gs_base_kernel", u64), ("gs_base_user", u64),
    ]


@compat_of(cpu_user_regs)
class compat_cpu_user_regs(XenStruct32):
    _fields_ = [
        ("ebx", u32), ("ecx", u32), ("edx", u32), ("esi", u32), ("edi", u32), ("ebp", u32),
        ("eax", u32), ("error_code", u16), ("entry_vector", u16), ("eip", u32), ("cs", u16),
        ("saved_upcall_mask", u8), ("_pad0", u8), ("eflags", u32), ("esp", u32),
        ("ss", u16), ("_pad1", u16), ("es", u16), ("_pad2", u16), ("ds", u16),
        ("_pad3", u16), ("fs", u16), ("_pad4", u16), ("gs", u16), ("_pad5", u16),
    ]


@compat_of(vcpu_guest_context)
class compat_vcpu_guest_context(XenStruct32):
    _fields_ = [
        ("fpu_ctxt", u8 * 512), ("flags", u32), ("user_regs", compat_cpu_user_regs),
        ("trap_ctxt", u8 * (8 * 256)),
        ("ldt_base", u32), ("ldt_ents", u32), ("gdt_frames", u32 * 16), ("gdt_ents", u32),
        ("kernel_ss", u32), ("kernel_sp", u32), ("ctrlreg", u32 * 8), ("debugreg", u32 * 8),
        ("event_callback_cs", u32), ("event_callback_eip", u32),
        ("failsafe_callback_cs", u32), ("failsafe_callback_eip", u32), ("vm_assist", u32),
    ]


assert ctypes.sizeof(vcpu_guest_context) == 5168
