"""Every hypercall number, and the handler each kind of caller gets (Xen's
xen/include/hypercall-defs.c, the table at its end).

pyxen builds PVH domains, which Xen treats as HVM guests, so two of Xen's four columns
apply: `hvm64` (a vCPU in 64-bit mode) and `hvm32` (32-bit protected mode: Xen's compat
ABI). Xen's pv64/pv32 columns serve PV guests, which pyxen does not run.

A column holds the handler, or:
- `PV_ONLY`: '-' in Xen's HVM columns (PV memory management, `iret`, the pre-3.2 forms of
  event_channel_op/physdev_op/sched_op, ...): an HVM/PVH guest gets -ENOSYS from Xen too;
- `MISSING`: Xen offers it to HVM guests, pyxen does not implement it (yet): -ENOSYS;
- `WITHDRAWN`: no longer offered to anyone (tmem_op): -ENOSYS.
All are counted and logged per number (hypercall.no_handler).

A 32-bit caller reads and writes each struct through its compat twin (`ctx.guest` picks it,
hypervisor/public/__init__.py), so where Xen's compat handler only translates structs the
hvm32 column names the same function as hvm64; it names a compat_* function where the
arguments themselves differ (set_timer_op's 64-bit timeout in two 32-bit registers).
Xen's `hvm` entries (memory_op, grant_table_op, physdev_op) pick do_ or compat_ inside.
"""

from __future__ import annotations

from .console import do_console_io
from .event_channel import do_event_channel_op
from .grant_table import do_grant_table_op
from .guest_access import GuestFault
from .hvm import do_hvm_op
from .hypercall import Handler, HypercallContext, no_handler
from .memory_op import do_memory_op
from .public import errno as E
from .public import xen as X
from .sched import do_sched_op
from .timer import compat_set_timer_op, do_set_timer_op
from .vcpu import do_vcpu_op
from .version import do_xen_version

PV_ONLY = "PV-only"
MISSING = "unimplemented"
WITHDRAWN = "withdrawn"
Column = Handler | str

HYPERCALLS: dict[int, tuple[Column, Column]] = {
    # hypercall                                hvm64                 hvm32
    X.__HYPERVISOR_set_trap_table:             (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_mmu_update:                 (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_set_gdt:                    (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_stack_switch:               (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_set_callbacks:              (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_fpu_taskswitch:             (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_sched_op_compat:            (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_platform_op:                (MISSING,             MISSING),
    X.__HYPERVISOR_set_debugreg:               (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_get_debugreg:               (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_update_descriptor:          (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_memory_op:                  (do_memory_op,        do_memory_op),
    X.__HYPERVISOR_multicall:                  (MISSING,             MISSING),
    X.__HYPERVISOR_update_va_mapping:          (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_set_timer_op:               (do_set_timer_op,     compat_set_timer_op),
    X.__HYPERVISOR_event_channel_op_compat:    (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_xen_version:                (do_xen_version,      do_xen_version),
    X.__HYPERVISOR_console_io:                 (do_console_io,       do_console_io),
    X.__HYPERVISOR_physdev_op_compat:          (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_grant_table_op:             (do_grant_table_op,   do_grant_table_op),
    X.__HYPERVISOR_vm_assist:                  (MISSING,             MISSING),
    X.__HYPERVISOR_update_va_mapping_otherdomain: (PV_ONLY,          PV_ONLY),
    X.__HYPERVISOR_iret:                       (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_vcpu_op:                    (do_vcpu_op,          do_vcpu_op),
    X.__HYPERVISOR_set_segment_base:           (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_mmuext_op:                  (MISSING,             MISSING),
    X.__HYPERVISOR_xsm_op:                     (MISSING,             MISSING),
    X.__HYPERVISOR_nmi_op:                     (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_sched_op:                   (do_sched_op,         do_sched_op),
    X.__HYPERVISOR_callback_op:                (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_xenoprof_op:                (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_event_channel_op:           (do_event_channel_op, do_event_channel_op),
    X.__HYPERVISOR_physdev_op:                 (MISSING,             MISSING),
    X.__HYPERVISOR_hvm_op:                     (do_hvm_op,           do_hvm_op),
    X.__HYPERVISOR_sysctl:                     (MISSING,             MISSING),
    X.__HYPERVISOR_domctl:                     (MISSING,             MISSING),
    X.__HYPERVISOR_kexec_op:                   (PV_ONLY,             PV_ONLY),
    X.__HYPERVISOR_tmem_op:                    (WITHDRAWN,           WITHDRAWN),
    X.__HYPERVISOR_argo_op:                    (MISSING,             MISSING),
    X.__HYPERVISOR_xenpmu_op:                  (MISSING,             MISSING),
    X.__HYPERVISOR_dm_op:                      (MISSING,             MISSING),
    X.__HYPERVISOR_hypfs_op:                   (MISSING,             MISSING),
    X.__HYPERVISOR_mca:                        (PV_ONLY,             PV_ONLY),
}

_UNKNOWN: tuple[Column, Column] = (MISSING, MISSING)


def dispatch(ctx: HypercallContext, nr: int) -> int:
    """Run hypercall `nr` for the caller's mode (ctx.compat picks the hvm32 column)."""
    handler = HYPERCALLS.get(nr, _UNKNOWN)[ctx.compat]
    if isinstance(handler, str):
        return no_handler(ctx, nr, handler)
    try:
        return handler(ctx)
    except GuestFault:
        return -E.EFAULT
