"""Hypercalls made with VMCALL / VMMCALL instead of the hypercall page (docs/hypercalls.md).

Current Linux (since the hypercall page was dropped, XSA-466) issues `vmcall` on Intel and
`vmmcall` on AMD itself. How pyxen gets to see them depends on the host's KVM:

- KVM_CAP_XEN_HVM with KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL (a kernel with CONFIG_KVM_XEN):
  both instructions exit to user space as KVM_EXIT_XEN with the decoded hypercall
  (`enable_xen_hcall_intercept`, machine.py `_xen_exit`);
- kvm_pvm (these machines): KVM_RUN spins on the instruction and never returns. The
  watchdog (watchdog.py) stops such a vCPU; RIP then points at the instruction, which
  machine.py `_probe` runs as the hypercall (HYPERCALL_INSNS);
- plain KVM on VMX/SVM without CONFIG_KVM_XEN: KVM answers the instruction itself with
  -KVM_ENOSYS (-1000) in rax and never tells user space: such guests must use the
  hypercall page.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import kvm_abi as K
from .kvm import KvmError, ioctl

if TYPE_CHECKING:
    from .kvm import Kvm, Vm

VMCALL = b"\x0f\x01\xc1"
VMMCALL = b"\x0f\x01\xd9"  # KVM may rewrite it to VMCALL in guest memory (seen here)
HYPERCALL_INSNS = (VMCALL, VMMCALL)

NO_INTERCEPT_ENV = "PYXEN_NO_XEN_HCALL_INTERCEPT"  # tests: take the portable path anyway


def xen_hcall_intercept_supported(xen_hvm_caps: int) -> bool:
    """KVM_CHECK_EXTENSION(KVM_CAP_XEN_HVM) returns the KVM_XEN_HVM_CONFIG_* flags the host
    supports (0: no Xen support at all)."""
    return bool(xen_hvm_caps & K.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)


def intercept_config() -> K.kvm_xen_hvm_config:
    """Intercept VMCALL/VMMCALL only: no hypercall MSR (pyxen's MSR filter keeps filling
    the hypercall page) and no blob, which KVM refuses together with the interception."""
    return K.kvm_xen_hvm_config(flags=K.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, msr=0)


def enable_xen_hcall_intercept(kvm: Kvm, vm: Vm) -> bool:
    """True if VMCALL/VMMCALL now exit as KVM_EXIT_XEN."""
    if os.environ.get(NO_INTERCEPT_ENV):
        return False
    try:
        caps = kvm.check_extension(K.KVM_CAP_XEN_HVM)
    except KvmError:
        return False
    if not xen_hcall_intercept_supported(caps):
        return False
    try:
        ioctl(vm.fd, K.KVM_XEN_HVM_CONFIG, intercept_config())
    except KvmError:
        return False
    return True
