"""Xen's HVM context blob (XEN_DOMCTL_gethvmcontext / sethvmcontext): what the
migration stream's HVM_CONTEXT record carries.

The blob is a sequence of `hvm_save_descriptor` (typecode, instance, length) + record,
beginning with HEADER and ending with END (xen/include/public/hvm/save.h). The records
themselves are the ctypes mirrors in hypervisor/public/hvm_save.py; arch/x86/vcpu_save.py
fills them from KVM and loads them back.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from .public import hvm_save as S

DESC = ctypes.sizeof(S.hvm_save_descriptor)

# Records whose length is fixed (Xen's hvm_load checks it against HVM_SAVE_LENGTH).
FIXED_LENGTH = {
    S.HVM_SAVE_HEADER: ctypes.sizeof(S.hvm_save_header),
    S.HVM_SAVE_CPU: ctypes.sizeof(S.hvm_hw_cpu),
    S.HVM_SAVE_LAPIC: ctypes.sizeof(S.hvm_hw_lapic),
    S.HVM_SAVE_LAPIC_REGS: ctypes.sizeof(S.hvm_hw_lapic_regs),
    S.HVM_SAVE_MTRR: ctypes.sizeof(S.hvm_hw_mtrr),
    S.HVM_SAVE_TSC_ADJUST: ctypes.sizeof(S.hvm_tsc_adjust),
}
XSAVE_FIXED = ctypes.sizeof(S.hvm_hw_cpu_xsave)
XSAVE_MAX = 3 * 8 + 4096


class HvmContextError(ValueError):
    """A malformed HVM context; the message names the record."""


@dataclass(frozen=True)
class HvmRecord:
    typecode: int
    instance: int
    data: bytes

    @property
    def name(self) -> str:
        return S.HVM_SAVE_NAMES.get(self.typecode, f"type {self.typecode}")


def header(cpuid_eax: int, gtsc_khz: int) -> HvmRecord:
    h = S.hvm_save_header(magic=S.HVM_FILE_MAGIC, version=S.HVM_FILE_VERSION,
                          changeset=0, cpuid=cpuid_eax, gtsc_khz=gtsc_khz)
    return HvmRecord(S.HVM_SAVE_HEADER, 0, bytes(h))


def pack(records: list[HvmRecord]) -> bytes:
    """The blob: descriptor + data for each record, then END (added here)."""
    out = bytearray()
    for r in records:
        out += bytes(S.hvm_save_descriptor(r.typecode, r.instance, len(r.data))) + r.data
    out += bytes(S.hvm_save_descriptor(S.HVM_SAVE_END, 0, 0))
    return bytes(out)


def unpack(blob: bytes, max_instance: int) -> list[HvmRecord]:
    """Parse and check a blob as Xen's hvm_load does: HEADER first with Xen's magic and
    version, known type codes with their lengths, per-vCPU instances in range, END last.
    Returns the records between HEADER and END (HEADER included)."""
    out: list[HvmRecord] = []
    off = 0
    while True:
        where = f"HVM context record {len(out)} at offset {off}"
        if off + DESC > len(blob):
            raise HvmContextError(f"{where}: truncated descriptor (no END record)")
        d = S.hvm_save_descriptor.from_buffer_copy(blob, off)
        off += DESC
        name = S.HVM_SAVE_NAMES.get(d.typecode, f"type {d.typecode}")
        where = f"HVM context record {len(out)} ({name})"
        if off + d.length > len(blob):
            raise HvmContextError(f"{where}: length {d.length} runs past the end of the "
                                  f"context ({len(blob) - off} bytes left)")
        data = bytes(blob[off:off + d.length])
        off += d.length
        if d.typecode == S.HVM_SAVE_END:
            if d.length:
                raise HvmContextError(f"{where}: END with length {d.length}")
            break
        if not out and d.typecode != S.HVM_SAVE_HEADER:
            raise HvmContextError(f"{where}: the context does not start with HEADER")
        want = FIXED_LENGTH.get(d.typecode)
        if d.typecode == S.CPU_XSAVE_CODE:
            if not XSAVE_FIXED <= d.length <= XSAVE_MAX:
                raise HvmContextError(f"{where}: length {d.length} outside "
                                      f"{XSAVE_FIXED}..{XSAVE_MAX}")
        elif want is None:
            raise HvmContextError(f"{where}: not a record pyxen can load for a PVH domain")
        elif d.length != want:
            raise HvmContextError(f"{where}: length {d.length}, expected {want}")
        if d.typecode == S.HVM_SAVE_HEADER:
            h = S.hvm_save_header.from_buffer_copy(data)
            if out:
                raise HvmContextError(f"{where}: a second HEADER")
            if h.magic != S.HVM_FILE_MAGIC or h.version != S.HVM_FILE_VERSION:
                raise HvmContextError(f"{where}: magic {h.magic:#x} version {h.version} is "
                                      f"not Xen's ({S.HVM_FILE_MAGIC:#x}, "
                                      f"{S.HVM_FILE_VERSION})")
        elif d.instance >= max_instance:
            raise HvmContextError(f"{where}: instance {d.instance} but the domain has "
                                  f"{max_instance} vCPU(s)")
        out.append(HvmRecord(d.typecode, d.instance, data))
    if off != len(blob):
        raise HvmContextError(f"{len(blob) - off} bytes after the HVM context's END")
    if not out:
        raise HvmContextError("HVM context has no HEADER")
    return out
