"""The CPUID a Xen HVM/PVH guest sees: the host's leaves plus Xen's leaves at 0x40000000."""

from __future__ import annotations

from ... import XEN_MAJOR, XEN_MINOR
from ...hypervisor.public import cpuid as X
from .kvm_abi import kvm_cpuid_entry2
from .msr import XEN_HYPERCALL_MSR

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1
HYPERVISOR_BIT = 1 << 31  # CPUID.1:ECX


def _entry(function: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0, index: int = 0,
           flags: int = 0) -> kvm_cpuid_entry2:
    return kvm_cpuid_entry2(function=function, index=index, flags=flags, eax=a, ebx=b, ecx=c,
                            edx=d)


def xen_leaves(vcpu_id: int, domid: int, tsc_khz: int) -> list[kvm_cpuid_entry2]:
    base = X.XEN_CPUID_FIRST_LEAF
    return [
        _entry(base, base + X.XEN_CPUID_MAX_NUM_LEAVES, X.XEN_CPUID_SIGNATURE_EBX,
               X.XEN_CPUID_SIGNATURE_ECX, X.XEN_CPUID_SIGNATURE_EDX),
        _entry(base + 1, (XEN_MAJOR << 16) | XEN_MINOR),
        # one hypercall page, installed by writing its address to this MSR
        _entry(base + 2, 1, XEN_HYPERCALL_MSR),
        _entry(base + 3, 0, 0, tsc_khz, 0, index=0, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
        _entry(base + 4, X.XEN_HVM_CPUID_VCPU_ID_PRESENT | X.XEN_HVM_CPUID_DOMID_PRESENT
               | X.XEN_HVM_CPUID_UPCALL_VECTOR,
               vcpu_id, domid),
        _entry(base + 5),
    ]


def guest_cpuid(host: list[kvm_cpuid_entry2], vcpu_id: int, domid: int,
                tsc_khz: int) -> list[kvm_cpuid_entry2]:
    """Host leaves (KVM's own hypervisor leaves dropped: this is Xen) + Xen's leaves."""
    out = []
    for h in host:
        if 0x40000000 <= h.function <= 0x400000FF:
            continue
        e = kvm_cpuid_entry2.from_buffer_copy(h)
        if e.function == 1:
            e.ecx |= HYPERVISOR_BIT
            e.ebx = (e.ebx & 0x00FFFFFF) | ((vcpu_id & 0xFF) << 24)
        elif e.function in (0xB, 0x1F):
            e.edx = vcpu_id
        out.append(e)
    return out + xen_leaves(vcpu_id, domid, tsc_khz)
