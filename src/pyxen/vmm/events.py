"""A domain's event channels, grant table and vCPU timers inside its VMM process, and
dom0's end for the backends that serve it here (Xen's evtchn_init / grant_table_init at
domain creation, and their teardown at destruction)."""

from __future__ import annotations

from typing import Any

from ..arch.x86.irq import MsiInjector
from ..hypervisor.domain import Domain
from ..hypervisor.event_channel import (
    ECS_FREE,
    ECS_RESERVED,
    BackendEventChannels,
    EvtchnHost,
    GuestEventChannels,
)
from ..hypervisor.grant_table import GrantTable
from ..hypervisor.timer import DomainTimers, timer_event

DOM0 = 0


def init_event_services(d: Domain, vm_fd: int) -> None:
    host = EvtchnHost()
    # The per-vCPU vector through the LAPIC, the callback vector injected directly
    # (arch/x86/irq.py); a bare MSI injector where no X86Machine runs the domain.
    platform = d.platform
    inject = (platform.upcall_injector() if hasattr(platform, "upcall_injector")
              else MsiInjector(vm_fd))
    d.evtchn = GuestEventChannels(host, d, inject=inject)
    BackendEventChannels(host, DOM0)
    d.grant_table = GrantTable(d)
    d.timers = DomainTimers(d, fire=lambda vid: timer_event(d, vid))


def dom0_channels(d: Domain) -> BackendEventChannels:
    """dom0's port table, where backends in this VMM open or bind their ends."""
    t = d.evtchn.host.tables[DOM0]
    assert isinstance(t, BackendEventChannels)
    return t


def teardown_event_services(d: Domain, backends: list[Any]) -> None:
    """Domain destruction: timers stop, every grant mapping is revoked, every port closes
    (backends' ends become unbound and are woken); then the backends stop."""
    closed = revoked = fast = 0
    if d.timers is not None:
        d.timers.destroy()
    if d.grant_table is not None:  # first: backends woken below must find nothing mapped
        revoked = len(d.grant_table.maptrack)
        d.grant_table.destroy()
    if d.evtchn is not None:
        closed = sum(1 for ch in d.evtchn.ports[1:] if ch.state not in (ECS_FREE, ECS_RESERVED))
        fast = d.evtchn.fast_send.area.sends
        d.evtchn.destroy()
    for be in backends:
        be.close()
    d.log(f"d{d.domid}: destroyed: closed {closed} event channel(s), revoked {revoked} "
          f"grant mapping(s); {fast} send(s) to dom0 done in the vCPU loop")
