"""The shared info page and per-vCPU vcpu_info: wallclock and vcpu_time_info.

Xen's time ABI: system_time (ns since the domain started) is
    system_time + (((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32
and the wallclock (wc_sec, wc_nsec) is the UTC time at system time 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import time

from .domain import VCPU, Domain
from .public.xen import XEN_LEGACY_MAX_VCPUS, shared_info, vcpu_info, vcpu_time_info

VCPU_INFO_SIZE = ctypes.sizeof(vcpu_info)
TIME_OFFSET = vcpu_info.time.offset
WC_OFFSET = shared_info.wc_version.offset


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
        return d.shared_info_gpa + v.id * VCPU_INFO_SIZE
    return None


def update_vcpu_time(d: Domain, v: VCPU) -> None:
    gpa = vcpu_info_gpa(d, v)
    if gpa is None or d.platform is None:
        return
    mul, shift = time_scale(d.platform.tsc_khz)
    t = gpa + TIME_OFFSET
    ver = int.from_bytes(d.memory.read(t, 4), "little")
    ver = (ver + 1) | 1
    d.memory.write(t, ver.to_bytes(4, "little"))  # odd: update in progress
    tsc = d.platform.guest_tsc(v.id)
    info = vcpu_time_info(version=ver, tsc_timestamp=tsc, system_time=system_time_ns(d),
                          tsc_to_system_mul=mul, tsc_shift=shift)
    d.memory.write(t, bytes(info))
    d.memory.write(t, ((ver + 1) & 0xFFFFFFFF).to_bytes(4, "little"))


def update_wallclock(d: Domain) -> None:
    if d.shared_info_gpa is None:
        return
    boot = time.time_ns() - system_time_ns(d)
    sec, nsec = divmod(boot, 10**9)
    base = d.shared_info_gpa + WC_OFFSET
    ver = int.from_bytes(d.memory.read(base, 4), "little")
    ver = (ver + 1) | 1
    d.memory.write(base, ver.to_bytes(4, "little"))
    d.memory.write(base + 4, (sec & 0xFFFFFFFF).to_bytes(4, "little")
                   + nsec.to_bytes(4, "little") + (sec >> 32).to_bytes(4, "little"))
    d.memory.write(base, ((ver + 1) & 0xFFFFFFFF).to_bytes(4, "little"))


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
