"""xen/sched.h: SCHEDOP_* and shutdown reasons."""

from __future__ import annotations

import ctypes

from . import XenStruct, XenStruct32, compat_handle, compat_of, domid_t, guest_handle, u32, u64

SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5
SCHEDOP_watchdog = 6
SCHEDOP_pin_override = 7

SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_soft_reset = 5
SHUTDOWN_MAX = 5

SHUTDOWN_NAMES = {
    SHUTDOWN_poweroff: "poweroff", SHUTDOWN_reboot: "reboot", SHUTDOWN_suspend: "suspend",
    SHUTDOWN_crash: "crash", SHUTDOWN_watchdog: "watchdog", SHUTDOWN_soft_reset: "soft_reset",
}
SHUTDOWN_BY_NAME = {v: k for k, v in SHUTDOWN_NAMES.items()}


class sched_shutdown(XenStruct):
    _xen_c_type_ = "struct sched_shutdown"
    _xen_header_ = "xen/sched.h"
    _fields_ = [("reason", ctypes.c_uint)]


class sched_poll(XenStruct):
    _xen_c_type_ = "struct sched_poll"
    _xen_header_ = "xen/sched.h"
    _fields_ = [("ports", guest_handle), ("nr_ports", ctypes.c_uint), ("timeout", u64)]


@compat_of(sched_poll)
class compat_sched_poll(XenStruct32):
    _fields_ = [("ports", compat_handle), ("nr_ports", ctypes.c_uint), ("timeout", u64)]


class sched_remote_shutdown(XenStruct):
    _xen_c_type_ = "struct sched_remote_shutdown"
    _xen_header_ = "xen/sched.h"
    _fields_ = [("domain_id", domid_t), ("reason", ctypes.c_uint)]


class sched_watchdog(XenStruct):
    _xen_c_type_ = "struct sched_watchdog"
    _xen_header_ = "xen/sched.h"
    _fields_ = [("id", u32), ("timeout", u32)]
