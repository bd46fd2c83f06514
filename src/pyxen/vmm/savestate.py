"""Stopping the domain for the last round of a live migration, and letting it run again
when the migration fails. A guest with PV control has suspended itself before (hostd's
control/shutdown request, vmm/precopy.py); a guest without it is paused and sent as it
is, as libxl does."""

from __future__ import annotations

from typing import Any

from .domain_save import complete_pending_exits, resume


def suspend_domain(machine: Any) -> None:
    """Pause (Xen's domain_pause: no vCPU in the guest on return), then finish the exits
    KVM completes only at the next KVM_RUN, so the saved registers are consistent."""
    machine.domain.pause()
    complete_pending_exits(machine)


def resume_domain(machine: Any, suspended_by_guest: bool) -> None:
    """libxl_domain_resume(suspend_cancel=1): a guest that suspended sees its
    SCHEDOP_shutdown return 1 (cancelled) and carries on; then the pause goes."""
    if suspended_by_guest:
        resume(machine, cancelled=True)
    machine.domain.unpause()
