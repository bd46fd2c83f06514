"""Event upcalls into the guest, the two ways Xen delivers them to an HVM/PVH vCPU.

**Per-vCPU upcall vector** (HVMOP_set_evtchn_upcall_vector): Xen sets the vector in the
vCPU's LAPIC (vlapic_set_irq), so the guest's LAPIC must be enabled and the guest EOIs it.
pyxen does the same through KVM's in-kernel LAPIC (KVM_SIGNAL_MSI): an MSI write to
0xFEE00000 | dest_apic_id << 12 with data = vector (fixed delivery, edge) sets the vector
in that vCPU's IRR; a running vCPU takes it without leaving KVM_RUN, a halted one (HLT in
the kernel) wakes up. KVM gives each vCPU the APIC ID of its index.

**Domain-wide callback vector** (HVM_PARAM_CALLBACK_IRQ, type vector): Xen does not use the
LAPIC at all. At every VM entry hvm_vcpu_has_pending_irq() offers the vector while
vcpu_info->evtchn_upcall_pending is set, and it is injected whenever the vCPU can take an
interrupt (RFLAGS.IF set, no STI/MOV-SS shadow; the TPR does not matter); nothing is
acknowledged, so it comes back each time the guest re-enables interrupts with
upcall_pending still set; no EOI, and an enabled LAPIC is not needed. pyxen injects it
the same way, with KVM_SET_VCPU_EVENTS from the vCPU's own thread while it is outside
KVM_RUN (`inject_direct`); arch/x86/machine.py decides when (see docs/event_channels.md).
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import kvm_abi as K
from .kvm import ioctl
from .kvm_abi import _iow

if TYPE_CHECKING:
    from ...hypervisor.domain import Domain
    from .kvm import Vcpu

MSI_ADDR_BASE = 0xFEE00000
RFLAGS_IF = 1 << 9


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


class UpcallInjector(MsiInjector):
    """The event-channel code's Injector, (vcpu_id, vector), as Xen's hvm_assert_evtchn_irq
    chooses: the vCPU's own upcall vector goes to its LAPIC (MSI); the domain-wide callback
    vector is handed to `callback(vcpu_id)`, which makes the vCPU inject it directly."""

    def __init__(self, vm_fd: int, domain: Domain, callback: Callable[[int], None]) -> None:
        super().__init__(vm_fd)
        self.domain = domain
        self.callback = callback

    def __call__(self, vcpu_id: int, vector: int) -> bool:
        ev = self.domain.evtchn
        percpu = ev.vstate[vcpu_id].upcall_vector if ev is not None else 0
        if percpu and vector == percpu:
            return super().__call__(vcpu_id, vector)
        self.callback(vcpu_id)
        return True


def get_events(kv: Vcpu) -> K.kvm_vcpu_events:
    ev = K.kvm_vcpu_events()
    ioctl(kv.fd, K.KVM_GET_VCPU_EVENTS, ev)
    return ev


def interrupt_window_open(rflags: int, ev: K.kvm_vcpu_events) -> bool:
    """Xen's hvm_interrupt_blocked() == hvm_intblk_none for an external vector: IF set, no
    interrupt shadow, and no event already on its way in (one at a time, as VM entry)."""
    return bool(rflags & RFLAGS_IF) and not (
        ev.interrupt.shadow or ev.interrupt.injected or ev.exception.injected
        or ev.exception.pending or ev.nmi.injected)


def inject_direct(kv: Vcpu, ev: K.kvm_vcpu_events, vector: int) -> None:
    """Deliver `vector` as an external interrupt at the next entry (the vCPU's own thread,
    outside KVM_RUN, window open). A vCPU halted in the kernel (HLT) is made runnable: the
    interrupt ends the halt, as on hardware."""
    ev.interrupt.injected = 1
    ev.interrupt.nr = vector & 0xFF
    ev.interrupt.soft = 0
    ev.flags = 0  # leave NMI-pending, SIPI, shadow and SMM state as they are
    ioctl(kv.fd, K.KVM_SET_VCPU_EVENTS, ev)
    if get_mp_state(kv) == K.KVM_MP_STATE_HALTED:
        kv.set_mp_state(K.KVM_MP_STATE_RUNNABLE)


def get_mp_state(kv: Vcpu) -> int:
    mp = K.kvm_mp_state()
    ioctl(kv.fd, K.KVM_GET_MP_STATE, mp)
    return int(mp.mp_state)
