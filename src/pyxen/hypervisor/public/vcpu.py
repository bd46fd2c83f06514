"""xen/vcpu.h: VCPUOP_* sub-ops and their argument structs."""

from __future__ import annotations

from . import XenStruct, u32, u64

VCPUOP_initialise = 0
VCPUOP_up = 1
VCPUOP_down = 2
VCPUOP_is_up = 3
VCPUOP_get_runstate_info = 4
VCPUOP_register_runstate_memory_area = 5
VCPUOP_set_periodic_timer = 6
VCPUOP_stop_periodic_timer = 7
VCPUOP_set_singleshot_timer = 8
VCPUOP_stop_singleshot_timer = 9
VCPUOP_register_vcpu_info = 10
VCPUOP_send_nmi = 11
VCPUOP_get_physid = 12
VCPUOP_register_vcpu_time_memory_area = 13


class vcpu_register_vcpu_info(XenStruct):
    _xen_c_type_ = "struct vcpu_register_vcpu_info"
    _xen_header_ = "xen/vcpu.h"
    _fields_ = [("mfn", u64), ("offset", u32), ("rsvd", u32)]
