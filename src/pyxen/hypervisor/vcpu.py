"""vcpu_op: SMP bring-up (initialise/up/down/is_up) and vcpu_info placement."""

from __future__ import annotations

import contextlib
import ctypes

from .hypercall import HypercallContext
from .public import errno as E
from .public import vcpu as VC
from .public.hvm_vcpu import VCPU_HVM_MODE_32B, VCPU_HVM_MODE_64B, vcpu_hvm_context
from .public.xen import vcpu_info
from .shared_info import update_vcpu_time, vcpu_info_gpa
from .timer import vcpu_timer_op

CR0_PE, CR0_PG, CR4_PAE, EFER_LME, EFER_LMA = 1, 1 << 31, 1 << 5, 1 << 8, 1 << 10


def _canonical(addr: int) -> bool:
    top = addr >> 47
    return top in (0, 0x1FFFF)


def check_hvm_context(c: vcpu_hvm_context) -> bool:
    """The sanity checks of Xen's arch_set_info_hvm_guest that matter to KVM."""
    if c.mode == VCPU_HVM_MODE_64B:
        r = c.cpu_regs.x86_64
        return (r.cr0 & (CR0_PE | CR0_PG) == (CR0_PE | CR0_PG) and r.cr4 & CR4_PAE != 0
                and r.efer & EFER_LME != 0 and _canonical(r.rip) and _canonical(r.rsp))
    if c.mode == VCPU_HVM_MODE_32B:
        r32 = c.cpu_regs.x86_32
        return not (r32.cr0 & CR0_PG and not r32.cr0 & CR0_PE)
    return False


def do_vcpu_op(ctx: HypercallContext) -> int:
    cmd, vid, arg = ctx.sarg(0), ctx.arg(1) & 0xFFFFFFFF, ctx.arg(2)
    d, g = ctx.domain, ctx.guest
    if vid >= d.max_vcpus:
        return -E.ENOENT
    v = d.vcpus[vid]
    rc = vcpu_timer_op(ctx, cmd, vid, arg)
    if rc is not None:
        return rc
    if cmd == VC.VCPUOP_initialise:
        c = g.read_struct(arg, vcpu_hvm_context)
        if not check_hvm_context(c):
            return -E.EINVAL
        with d.cond:
            if v.initialised:
                return -E.EEXIST
            v.pending_context = c
            v.initialised = True
        return 0
    if cmd == VC.VCPUOP_up:
        if not v.initialised:
            return -E.EINVAL
        d.vcpu_up(v)
        return 0
    if cmd == VC.VCPUOP_down:
        d.vcpu_down(v)
        return 0
    if cmd == VC.VCPUOP_is_up:
        return int(v.online)
    if cmd == VC.VCPUOP_register_vcpu_info:
        info = g.read_struct(arg, VC.vcpu_register_vcpu_info)
        gpa = (info.mfn << 12) + info.offset
        if (info.offset + ctypes.sizeof(vcpu_info) > 4096
                or not d.memory.is_ram(gpa, ctypes.sizeof(vcpu_info))):
            return -E.EINVAL
        if v.vcpu_info_gpa is not None:
            return -E.EINVAL
        ev = d.evtchn  # no event may land in the old place while it moves
        with ev.host.lock if ev is not None else contextlib.nullcontext():
            if ev is not None:
                content = ctypes.string_at(ev.vcpu_info_addr(v.id), ctypes.sizeof(vcpu_info))
            else:
                old = vcpu_info_gpa(d, v)
                content = (d.memory.read(old, ctypes.sizeof(vcpu_info)) if old is not None
                           else bytes(ctypes.sizeof(vcpu_info)))
            v.vcpu_info_gpa = gpa
            d.memory.write(gpa, content)
            if ev is not None:
                ev.vcpu_info_moved(v.id)
        update_vcpu_time(d, v)
        return 0
    return -E.ENOSYS
