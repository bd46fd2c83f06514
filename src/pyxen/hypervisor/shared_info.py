"""The shared info page and per-vCPU vcpu_info: their layout (64- or 32-bit), wallclock
and vcpu_time_info.

Xen's time ABI: system_time (ns since the domain started) is
    system_time + (((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32
and the wallclock (wc_sec, wc_nsec, and the high half wc_sec_hi) is the UTC time at
system time 0.

Which layout a domain's pages have is Xen's `has_32bit_shinfo`: for an HVM/PVH guest it is
latched from the mode of the vCPU that sets HVM_PARAM_CALLBACK_IRQ or writes the hypercall
page MSR (hvm_latch_shinfo_size), the first things PV drivers do; 64-bit until then.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from dataclasses import dataclass

from .domain import VCPU, Domain
from .public import layout_for
from .public.xen import XEN_LEGACY_MAX_VCPUS, shared_info, vcpu_info, vcpu_time_info


@dataclass(frozen=True)
class ShinfoLayout:
    """Where the fields of shared_info / vcpu_info are, for one ABI."""

    compat: bool
    word_bits: int  # evtchn_pending / evtchn_mask / evtchn_pending_sel words
    pending_off: int
    mask_off: int
    wc_version_off: int
    wc_sec_off: int
    wc_nsec_off: int
    wc_sec_hi_off: int
    vcpu_info_size: int
    upcall_pending_off: int
    upcall_mask_off: int
    pending_sel_off: int
    time_off: int

    @classmethod
    def of(cls, compat: bool) -> ShinfoLayout:
        si, vi = layout_for(shared_info, compat), layout_for(vcpu_info, compat)
        types = dict(si._fields_)
        hi = (si.arch.offset + types["arch"].wc_sec_hi.offset) if compat else si.wc_sec_hi.offset
        return cls(compat=compat, word_bits=8 * ctypes.sizeof(types["evtchn_pending"]._type_),
                   pending_off=si.evtchn_pending.offset, mask_off=si.evtchn_mask.offset,
                   wc_version_off=si.wc_version.offset, wc_sec_off=si.wc_sec.offset,
                   wc_nsec_off=si.wc_nsec.offset, wc_sec_hi_off=hi,
                   vcpu_info_size=ctypes.sizeof(vi),
                   upcall_pending_off=vi.evtchn_upcall_pending.offset,
                   upcall_mask_off=vi.evtchn_upcall_mask.offset,
                   pending_sel_off=vi.evtchn_pending_sel.offset, time_off=vi.time.offset)


NATIVE = ShinfoLayout.of(False)
COMPAT = ShinfoLayout.of(True)
assert NATIVE.vcpu_info_size == COMPAT.vcpu_info_size == 64  # register_vcpu_info relies on it


def shinfo_layout(d: Domain) -> ShinfoLayout:
    return COMPAT if d.has_32bit_shinfo else NATIVE


def latch_shinfo_size(d: Domain, long_mode: bool) -> None:
    """hvm_latch_shinfo_size: the calling vCPU's mode (64-bit: long mode with CS.L) picks
    the layout from now on. Like Xen, nothing already in the pages is converted; the
    wallclock is rewritten where the new layout has it."""
    d.has_32bit_shinfo = not long_mode
    update_wallclock(d)


def system_time_ns(d: Domain) -> int:
    return time.monotonic_ns() - d.created_ns


def time_scale(tsc_khz: int) -> tuple[int, int]:
    """(tsc_to_system_mul, tsc_shift) exactly as Xen's set_time_scale computes them."""
    tps = tsc_khz * 1000
    shift = 0
    while tps > 2 * 10**9:
        tps >>= 1
        shift -= 1
    while tps <= 10**9:
        tps <<= 1
        shift += 1
    return (10**9 << 32) // tps, shift


def vcpu_info_gpa(d: Domain, v: VCPU) -> int | None:
    if v.vcpu_info_gpa is not None:
        return v.vcpu_info_gpa
    if d.shared_info_gpa is not None and v.id < XEN_LEGACY_MAX_VCPUS:
        return d.shared_info_gpa + v.id * shinfo_layout(d).vcpu_info_size
    return None


def update_vcpu_time(d: Domain, v: VCPU) -> None:
    gpa = vcpu_info_gpa(d, v)
    if gpa is None or d.platform is None:
        return
    mul, shift = time_scale(d.platform.tsc_khz)
    t = gpa + shinfo_layout(d).time_off
    ver = int.from_bytes(d.memory.read(t, 4), "little")
    ver = (ver + 1) | 1
    d.memory.write(t, ver.to_bytes(4, "little"))  # odd: update in progress
    tsc = d.platform.guest_tsc(v.id)
    info = vcpu_time_info(version=ver, tsc_timestamp=tsc, system_time=system_time_ns(d),
                          tsc_to_system_mul=mul, tsc_shift=shift)
    d.memory.write(t, bytes(info))
    d.memory.write(t, ((ver + 1) & 0xFFFFFFFF).to_bytes(4, "little"))


def update_wallclock(d: Domain) -> None:
    """update_domain_wallclock_time, in the domain's layout."""
    if d.shared_info_gpa is None:
        return
    lay = shinfo_layout(d)
    boot = time.time_ns() - system_time_ns(d)
    sec, nsec = divmod(boot, 10**9)
    base = d.shared_info_gpa
    ver = int.from_bytes(d.memory.read(base + lay.wc_version_off, 4), "little")
    ver = (ver + 1) | 1
    d.memory.write(base + lay.wc_version_off, ver.to_bytes(4, "little"))
    d.memory.write(base + lay.wc_sec_off, (sec & 0xFFFFFFFF).to_bytes(4, "little"))
    d.memory.write(base + lay.wc_nsec_off, nsec.to_bytes(4, "little"))
    d.memory.write(base + lay.wc_sec_hi_off, (sec >> 32).to_bytes(4, "little"))
    d.memory.write(base + lay.wc_version_off, ((ver + 1) & 0xFFFFFFFF).to_bytes(4, "little"))


def map_shared_info(d: Domain, gpfn: int) -> None:
    """XENMAPSPACE_shared_info: the page at gpfn becomes the shared info page.

    Its contents come along: event bits set before the guest mapped it (kept in the
    event channels' private copy) or at its previous location.
    """
    ev = d.evtchn
    with ev.host.lock if ev is not None else contextlib.nullcontext():
        if d.shared_info_gpa is not None:
            content = d.memory.read(d.shared_info_gpa, 4096)
        elif ev is not None:
            content = ev.shadow_contents()
        else:
            content = bytes(4096)
        d.shared_info_gpa = gpfn << 12
        d.memory.write(d.shared_info_gpa, content)
    update_wallclock(d)
    for v in d.vcpus:
        if v.id < XEN_LEGACY_MAX_VCPUS and v.vcpu_info_gpa is None:
            update_vcpu_time(d, v)
