"""xen/hvm/hvm_op.h and xen/vcpu.h parts that event delivery and timers use."""

from __future__ import annotations

from . import XenStruct, XenStruct32, compat_of, u8, u32, u64

HVMOP_set_evtchn_upcall_vector = 23
HVM_PARAM_CALLBACK_TYPE_GSI = 0
HVM_PARAM_CALLBACK_TYPE_PCI_INTX = 1
HVM_PARAM_CALLBACK_TYPE_VECTOR = 2

VCPU_SSHOTTMR_future = 1


class xen_hvm_evtchn_upcall_vector(XenStruct):
    _xen_c_type_ = "struct xen_hvm_evtchn_upcall_vector"
    _xen_header_ = "xen/hvm/hvm_op.h"
    _fields_ = [("vcpu", u32), ("vector", u8)]


class vcpu_set_periodic_timer(XenStruct):
    _xen_c_type_ = "struct vcpu_set_periodic_timer"
    _xen_header_ = "xen/vcpu.h"
    _fields_ = [("period_ns", u64)]


class vcpu_set_singleshot_timer(XenStruct):
    _xen_c_type_ = "struct vcpu_set_singleshot_timer"
    _xen_header_ = "xen/vcpu.h"
    _fields_ = [("timeout_abs_ns", u64), ("flags", u32)]


@compat_of(vcpu_set_singleshot_timer)
class compat_vcpu_set_singleshot_timer(XenStruct32):  # no tail padding on i386
    _fields_ = [("timeout_abs_ns", u64), ("flags", u32)]
