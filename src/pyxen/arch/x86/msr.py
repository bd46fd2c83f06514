"""The hypercall-page MSR (advertised in CPUID 0x40000002) and the MSR filter that makes
guest writes to it exit to user space."""

from __future__ import annotations

from . import kvm_abi as K
from .kvm import Vm

XEN_HYPERCALL_MSR = 0x40000000


def install_msr_filter(vm: Vm) -> None:
    vm.enable_cap(K.KVM_CAP_X86_USER_SPACE_MSR, K.KVM_MSR_EXIT_REASON_FILTER)
    # A clear bit denies the access in the kernel, which sends it to user space.
    vm.set_msr_filter([(K.KVM_MSR_FILTER_WRITE, XEN_HYPERCALL_MSR, 1, b"\x00")])
