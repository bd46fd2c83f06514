"""Stopping the domain for the last round of a live migration, and letting it run again
when the migration fails. A guest without PV control is paused and sent as it is (as
libxl does for it); the guest-cooperative suspend (control/shutdown = "suspend") is the
save/restore path's (vmm/domain_save.py) and not used by live migration yet."""

from __future__ import annotations

from typing import Any

from ..hypervisor.domain import Domain
from .domain_save import complete_pending_exits


def suspend_domain(machine: Any) -> None:
    """Pause (Xen's domain_pause: no vCPU in the guest on return), then finish the exits
    KVM completes only at the next KVM_RUN, so the saved registers are consistent."""
    machine.domain.pause()
    complete_pending_exits(machine)


def resume_domain(d: Domain) -> None:
    d.unpause()
