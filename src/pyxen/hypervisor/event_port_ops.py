"""The delivery ABI of event channels (Xen's `struct evtchn_port_ops`, xen/event.h).

A guest's port table (event_channel.py) decides *which* port fires and on which vCPU; a
delivery ABI decides how that shows up in guest memory: bits in shared_info and vcpu_info
(event_2l.py) or event words linked into per-vCPU priority queues (event_fifo.py). A domain
starts with 2-level and switches to FIFO with EVTCHNOP_init_control (back with
EVTCHNOP_reset). Every method is called with the port table's lock held.

Also here, because the table and both ABIs use them: the port record (`Channel`, Xen's
struct evtchn), its states and the error type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from .public.event_channel import EVTCHN_FIFO_PRIORITY_DEFAULT

# Port states (Xen's ECS_*).
ECS_FREE, ECS_RESERVED, ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ, ECS_VIRQ, ECS_IPI = range(7)


class EvtchnError(Exception):
    """A Xen error for the caller: `errno` is positive, hypercalls return -errno."""

    def __init__(self, errno: int, why: str = "") -> None:
        super().__init__(why or os.strerror(errno))
        self.errno = errno


@dataclass
class Channel:
    state: int = ECS_FREE
    notify_vcpu: int = 0
    remote_domid: int = 0  # ECS_UNBOUND: who may bind; ECS_INTERDOMAIN: the peer
    remote_port: int = 0
    virq: int = 0
    priority: int = EVTCHN_FIFO_PRIORITY_DEFAULT  # FIFO queue (0 highest .. 15 lowest)


class EvtchnPortOps(Protocol):
    """What a delivery ABI does for one domain; `port` is valid in the table, `ch` its
    record. The guest may change the same memory concurrently: implementations use
    hypervisor/atomic.py on it."""

    name: str  # "2-level" / "FIFO"

    def max_ports(self) -> int:
        """Ports the ABI can address (Xen's max_evtchns)."""
        ...

    def init_port(self, port: int, ch: Channel) -> None:
        """A port was just bound (evtchn_port_init)."""
        ...

    def set_pending(self, port: int, ch: Channel, vcpu: int) -> None: ...
    def clear_pending(self, port: int, ch: Channel) -> None: ...

    def unmask(self, port: int, ch: Channel) -> None:
        """EVTCHNOP_unmask: clear the mask and re-deliver a pending event."""
        ...

    def is_pending(self, port: int) -> bool: ...
    def is_masked(self, port: int) -> bool: ...

    def is_busy(self, port: int) -> bool:
        """Still on a queue: the port may not be reused yet (FIFO's LINKED)."""
        ...

    def set_priority(self, port: int, ch: Channel, priority: int) -> None:
        """EVTCHNOP_set_priority; EvtchnError(ENOSYS) where the ABI has none."""
        ...

    def print_state(self, port: int, ch: Channel) -> str:
        """The ABI's part of `xl debug-keys e` for the port (after "[p/m/")."""
        ...
