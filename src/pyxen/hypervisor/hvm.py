"""hvm_op: HVM parameters as an unprivileged HVM/PVH guest may see and set them; the
callback via (HVM_PARAM_CALLBACK_IRQ) and what a HLT does (hvm_hlt, hvm_vcpu_down)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .event_channel import EvtchnError
from .hypercall import HypercallContext
from .public import errno as E
from .public import hvm_op as H
from .public.hvm_op_evtchn import (
    HVM_PARAM_CALLBACK_TYPE_VECTOR,
    HVMOP_set_evtchn_upcall_vector,
    xen_hvm_evtchn_upcall_vector,
)
from .public.sched import SHUTDOWN_poweroff
from .shared_info import latch_shinfo_size
from .xsm import target_error

if TYPE_CHECKING:
    from .domain import VCPU, Domain

# What Xen's hvm_allow_{get,set}_param let a guest do to its own parameters.
GUEST_GET = {H.HVM_PARAM_CALLBACK_IRQ, H.HVM_PARAM_STORE_PFN, H.HVM_PARAM_STORE_EVTCHN,
             H.HVM_PARAM_CONSOLE_PFN, H.HVM_PARAM_CONSOLE_EVTCHN, H.HVM_PARAM_PAE_ENABLED,
             H.HVM_PARAM_TIMER_MODE, H.HVM_PARAM_HPET_ENABLED, H.HVM_PARAM_VIRIDIAN,
             H.HVM_PARAM_ACPI_S_STATE}
GUEST_SET = {H.HVM_PARAM_CALLBACK_IRQ}


def do_hvm_op(ctx: HypercallContext) -> int:
    op, arg = ctx.arg(0), ctx.arg(1)
    if op == HVMOP_set_evtchn_upcall_vector:
        return _set_evtchn_upcall_vector(ctx, arg)
    if op not in (H.HVMOP_set_param, H.HVMOP_get_param):
        return -E.ENOSYS
    p = ctx.guest.read_struct(arg, H.xen_hvm_param)
    if err := target_error(ctx.domain, p.domid):
        return err
    if p.index >= H.HVM_PARAM_NR:
        return -E.EINVAL
    params = ctx.domain.hvm_params
    if op == H.HVMOP_get_param:
        if p.index not in GUEST_GET:
            return -E.EPERM
        p.value = params.get(p.index, 0)
        ctx.guest.write_struct(arg, p)
        return 0
    if p.index not in GUEST_SET:
        return -E.EPERM
    params[p.index] = p.value
    if p.index == H.HVM_PARAM_CALLBACK_IRQ:
        set_callback_via(ctx.domain, p.value)
        latch_shinfo_size(ctx.domain, ctx.long_mode)  # Xen's hvm_latch_shinfo_size
    return 0


def set_callback_via(d: Domain, via: int) -> None:
    """Xen's hvm_set_callback_via for a PVH domain. Only the vector type (bits 63:56 = 2)
    can be delivered: the GSI and PCI INTx types need a virtual IOAPIC and PIC, which a
    PVH domain does not have, so Xen ignores them and keeps the previous via (the value
    is still stored, and reads back). A GSI of 0 ("none") is one of them: on PVH it does
    not turn a vector off either. The vector is injected directly, without the LAPIC
    (arch/x86/irq.py)."""
    if via >> 56 != HVM_PARAM_CALLBACK_TYPE_VECTOR or d.evtchn is None:
        return
    d.evtchn.set_callback_via(via)
    d.log(f"Dom{d.domid} callback via changed to Direct Vector 0x{via & 0xFF:02x}")


def hvm_hlt(d: Domain, v: VCPU, interrupts_enabled: bool) -> None:
    """A HLT (noticed by the arch layer). With interrupts on the vCPU sleeps until an
    interrupt, which KVM does by itself; with them off nothing can wake it (only an NMI
    would, on hardware), which Xen takes as the vCPU going down."""
    if not interrupts_enabled:
        hvm_vcpu_down(d, v)


def hvm_vcpu_down(d: Domain, v: VCPU) -> None:
    """The vCPU is down (as after VCPUOP_down: VCPUOP_up resumes it after its HLT); when no
    vCPU is left up, the domain powers off."""
    d.vcpu_down(v)
    if d.online_vcpus() == 0:
        d.log(f"d{d.domid}v{v.id} All CPUs offline -- powering off.")
        d.shutdown(SHUTDOWN_poweroff)


def _set_evtchn_upcall_vector(ctx: HypercallContext, arg: int) -> int:
    """Per-vCPU upcall vector (preferred to the domain-wide HVM_PARAM_CALLBACK_IRQ)."""
    a = ctx.guest.read_struct(arg, xen_hvm_evtchn_upcall_vector)
    ev = ctx.domain.evtchn
    if ev is None:
        return -E.ENOSYS
    try:
        ev.set_upcall_vector(a.vcpu, a.vector)
    except EvtchnError as e:
        return -e.errno
    return 0
