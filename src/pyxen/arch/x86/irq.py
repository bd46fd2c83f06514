"""Interrupts into the guest through KVM's in-kernel LAPIC (KVM_SIGNAL_MSI).

An MSI write to 0xFEE00000 | dest_apic_id << 12 with data = vector (fixed delivery, edge)
sets the vector in that vCPU's IRR: a running vCPU takes it without leaving KVM_RUN, a
halted one (HLT in the kernel) wakes up, one in user space gets it at its next entry.
KVM gives each vCPU the APIC ID of its index, so vCPU n is APIC ID n.
"""

from __future__ import annotations

import ctypes as C

from .kvm import ioctl
from .kvm_abi import _iow

MSI_ADDR_BASE = 0xFEE00000


class kvm_msi(C.Structure):
    _fields_ = [("address_lo", C.c_uint32), ("address_hi", C.c_uint32),
                ("data", C.c_uint32), ("flags", C.c_uint32), ("devid", C.c_uint32),
                ("pad", C.c_uint8 * 12)]


KVM_SIGNAL_MSI = _iow(0xA5, kvm_msi)


class MsiInjector:
    """inject(vcpu_id, vector): returns True if the LAPIC accepted it (a software-disabled
    LAPIC drops fixed interrupts, as on real hardware)."""

    def __init__(self, vm_fd: int) -> None:
        self.vm_fd = vm_fd
        self.msi = kvm_msi()
        self.dropped = 0

    def __call__(self, vcpu_id: int, vector: int) -> bool:
        msi = kvm_msi(address_lo=MSI_ADDR_BASE | (vcpu_id & 0xFF) << 12, data=vector & 0xFF)
        accepted = ioctl(self.vm_fd, KVM_SIGNAL_MSI, msi) > 0
        if not accepted:
            self.dropped += 1
        return accepted
