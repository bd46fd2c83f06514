"""hvm_op: HVM parameters as an unprivileged HVM/PVH guest may see and set them."""

from __future__ import annotations

from .event_channel import EvtchnError
from .hypercall import HypercallContext
from .public import errno as E
from .public import hvm_op as H
from .public.hvm_op_evtchn import HVMOP_set_evtchn_upcall_vector, xen_hvm_evtchn_upcall_vector
from .shared_info import latch_shinfo_size
from .xsm import target_error

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
    if p.index == H.HVM_PARAM_CALLBACK_IRQ and ctx.domain.evtchn is not None:
        ctx.domain.evtchn.set_callback_via(p.value)
    if p.index == H.HVM_PARAM_CALLBACK_IRQ:
        latch_shinfo_size(ctx.domain, ctx.long_mode)  # Xen's hvm_latch_shinfo_size
    return 0


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
