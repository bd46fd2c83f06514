"""xen/hvm/hvm_op.h and xen/hvm/params.h: HVMOP_* and HVM_PARAM_*."""

from __future__ import annotations

from . import XenStruct, domid_t, u16, u32, u64

HVMOP_set_param = 0
HVMOP_get_param = 1
HVMOP_pagetable_dying = 9
HVMOP_get_time = 10

HVM_PARAM_CALLBACK_IRQ = 0
HVM_PARAM_STORE_PFN = 1
HVM_PARAM_STORE_EVTCHN = 2
HVM_PARAM_PAE_ENABLED = 4
HVM_PARAM_IOREQ_PFN = 5
HVM_PARAM_BUFIOREQ_PFN = 6
HVM_PARAM_VIRIDIAN = 9
HVM_PARAM_TIMER_MODE = 10
HVM_PARAM_HPET_ENABLED = 11
HVM_PARAM_ACPI_S_STATE = 14
HVM_PARAM_CONSOLE_PFN = 17
HVM_PARAM_CONSOLE_EVTCHN = 18
HVM_PARAM_NR = 39


class xen_hvm_param(XenStruct):
    _xen_c_type_ = "struct xen_hvm_param"
    _xen_header_ = "xen/hvm/hvm_op.h"
    _fields_ = [("domid", domid_t), ("pad", u16), ("index", u32), ("value", u64)]
