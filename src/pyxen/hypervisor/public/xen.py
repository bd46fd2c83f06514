"""xen/xen.h: hypercall numbers, shared_info, vcpu_info, vcpu_time_info.

shared_info, vcpu_info and their arch_* parts have an x86_32 twin each (the layout of a
domain whose `has_32bit_shinfo` is latched: hypervisor/shared_info.py): the pending/mask
words and evtchn_pending_sel are 32 bits, and wc_sec_hi moves into arch_shared_info.
vcpu_time_info is the same in both ABIs; both vcpu_info layouts are 64 bytes.
"""

from __future__ import annotations

from . import (
    XenStruct,
    XenStruct32,
    compat_of,
    compat_pfn_t,
    compat_ulong_t,
    i8,
    u8,
    u32,
    u64,
    xen_pfn_t,
    xen_ulong_t,
)

__HYPERVISOR_set_trap_table = 0
__HYPERVISOR_mmu_update = 1
__HYPERVISOR_set_gdt = 2
__HYPERVISOR_stack_switch = 3
__HYPERVISOR_set_callbacks = 4
__HYPERVISOR_fpu_taskswitch = 5
__HYPERVISOR_sched_op_compat = 6
__HYPERVISOR_platform_op = 7
__HYPERVISOR_set_debugreg = 8
__HYPERVISOR_get_debugreg = 9
__HYPERVISOR_update_descriptor = 10
__HYPERVISOR_memory_op = 12
__HYPERVISOR_multicall = 13
__HYPERVISOR_update_va_mapping = 14
__HYPERVISOR_set_timer_op = 15
__HYPERVISOR_event_channel_op_compat = 16
__HYPERVISOR_xen_version = 17
__HYPERVISOR_console_io = 18
__HYPERVISOR_physdev_op_compat = 19
__HYPERVISOR_grant_table_op = 20
__HYPERVISOR_vm_assist = 21
__HYPERVISOR_update_va_mapping_otherdomain = 22
__HYPERVISOR_iret = 23
__HYPERVISOR_vcpu_op = 24
__HYPERVISOR_set_segment_base = 25
__HYPERVISOR_mmuext_op = 26
__HYPERVISOR_xsm_op = 27
__HYPERVISOR_nmi_op = 28
__HYPERVISOR_sched_op = 29
__HYPERVISOR_callback_op = 30
__HYPERVISOR_xenoprof_op = 31
__HYPERVISOR_event_channel_op = 32
__HYPERVISOR_physdev_op = 33
__HYPERVISOR_hvm_op = 34
__HYPERVISOR_sysctl = 35
__HYPERVISOR_domctl = 36
__HYPERVISOR_kexec_op = 37
__HYPERVISOR_tmem_op = 38
__HYPERVISOR_argo_op = 39
__HYPERVISOR_xenpmu_op = 40
__HYPERVISOR_dm_op = 41
__HYPERVISOR_hypfs_op = 42
__HYPERVISOR_mca = 48  # __HYPERVISOR_arch_0 on x86 (arch-x86/xen-mca.h)

HYPERCALL_NAMES = {
    v: k.removeprefix("__HYPERVISOR_")
    for k, v in dict(globals()).items() if k.startswith("__HYPERVISOR_")
}

CONSOLEIO_write = 0
CONSOLEIO_read = 1

DOMID_SELF = 0x7FF0
XEN_LEGACY_MAX_VCPUS = 32


class vcpu_time_info(XenStruct):
    _xen_c_type_ = "struct vcpu_time_info"
    _xen_header_ = "xen/xen.h"
    _fields_ = [
        ("version", u32), ("pad0", u32), ("tsc_timestamp", u64), ("system_time", u64),
        ("tsc_to_system_mul", u32), ("tsc_shift", i8), ("flags", u8), ("pad1", u8 * 2),
    ]


class arch_vcpu_info(XenStruct):
    _xen_c_type_ = "struct arch_vcpu_info"
    _xen_header_ = "xen/xen.h"
    _fields_ = [("cr2", xen_ulong_t), ("pad", xen_ulong_t)]


@compat_of(arch_vcpu_info)
class compat_arch_vcpu_info(XenStruct32):
    _fields_ = [("cr2", compat_ulong_t), ("pad", compat_ulong_t * 5)]


class vcpu_info(XenStruct):
    _xen_c_type_ = "struct vcpu_info"
    _xen_header_ = "xen/xen.h"
    _fields_ = [
        ("evtchn_upcall_pending", u8), ("evtchn_upcall_mask", u8),
        ("evtchn_pending_sel", xen_ulong_t), ("arch", arch_vcpu_info), ("time", vcpu_time_info),
    ]


@compat_of(vcpu_info)
class compat_vcpu_info(XenStruct32):
    _fields_ = [
        ("evtchn_upcall_pending", u8), ("evtchn_upcall_mask", u8),
        ("evtchn_pending_sel", compat_ulong_t), ("arch", compat_arch_vcpu_info),
        ("time", vcpu_time_info),
    ]


class arch_shared_info(XenStruct):
    _xen_c_type_ = "struct arch_shared_info"
    _xen_header_ = "xen/xen.h"
    _fields_ = [
        ("max_pfn", xen_ulong_t), ("pfn_to_mfn_frame_list_list", xen_pfn_t),
        ("nmi_reason", xen_ulong_t), ("p2m_cr3", xen_ulong_t), ("p2m_vaddr", xen_ulong_t),
        ("p2m_generation", xen_ulong_t),
    ]


@compat_of(arch_shared_info)
class compat_arch_shared_info(XenStruct32):
    _fields_ = [
        ("max_pfn", compat_ulong_t), ("pfn_to_mfn_frame_list_list", compat_pfn_t),
        ("nmi_reason", compat_ulong_t), ("p2m_cr3", compat_ulong_t),
        ("p2m_vaddr", compat_ulong_t), ("p2m_generation", compat_ulong_t),
        ("wc_sec_hi", u32),  # no room for it in the generic part of the 32-bit layout
    ]


class shared_info(XenStruct):
    _xen_c_type_ = "struct shared_info"
    _xen_header_ = "xen/xen.h"
    _fields_ = [
        ("vcpu_info", vcpu_info * XEN_LEGACY_MAX_VCPUS),
        ("evtchn_pending", xen_ulong_t * 64), ("evtchn_mask", xen_ulong_t * 64),
        ("wc_version", u32), ("wc_sec", u32), ("wc_nsec", u32), ("wc_sec_hi", u32),
        ("arch", arch_shared_info),
    ]


@compat_of(shared_info)
class compat_shared_info(XenStruct32):
    _fields_ = [
        ("vcpu_info", compat_vcpu_info * XEN_LEGACY_MAX_VCPUS),
        ("evtchn_pending", compat_ulong_t * 32), ("evtchn_mask", compat_ulong_t * 32),
        ("wc_version", u32), ("wc_sec", u32), ("wc_nsec", u32),
        ("arch", compat_arch_shared_info),
    ]
