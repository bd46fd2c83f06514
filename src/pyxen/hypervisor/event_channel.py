"""Event channels (xen/event_channel.h; Xen's common/event_channel.c): per-domain port
tables, interdomain/VIRQ/IPI bindings, the EVTCHNOP dispatcher and the upcall to the vCPU.

How a raised port shows up in guest memory is the domain's delivery ABI
(event_port_ops.py): 2-level bits in shared_info (event_2l.py) until the guest asks for
FIFO queues with EVTCHNOP_init_control (event_fifo.py). Both end in the same upcall
(`mark_events_pending` -> `assert_upcall` -> the injector).

Every domain that lives in this process has a port table in one `EvtchnHost` (one lock for
all of them, so an interdomain bind or close updates both ends atomically). A guest's
table (`GuestEventChannels`) delivers through its ABI and injects the upcall vector; dom0's
table (`BackendEventChannels`) is where pyxen's backends live: each dom0 port is a
`BackendPort` with an eventfd to wait on.
Errors are raised as `EvtchnError(errno)`; the hypercall handler returns them negated.
"""

from __future__ import annotations

import ctypes
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import atomic
from .event_2l import EvtchnTwoLevel
from .event_fifo import CONTROL_BLOCK_SIZE, EvtchnFifo
from .event_port_ops import (
    ECS_FREE,
    ECS_INTERDOMAIN,
    ECS_IPI,
    ECS_PIRQ,
    ECS_RESERVED,
    ECS_UNBOUND,
    ECS_VIRQ,
    Channel,
    EvtchnError,
    EvtchnPortOps,
)
from .public import errno as E
from .public import event_channel as EC
from .public.xen import DOMID_SELF, XEN_LEGACY_MAX_VCPUS
from .shared_info import shinfo_layout
from .xsm import XsmDenied, xsm_target

if TYPE_CHECKING:
    from .domain import VCPU, Domain
    from .memory import GuestMemory

__all__ = ["ECS_FREE", "ECS_INTERDOMAIN", "ECS_IPI", "ECS_PIRQ", "ECS_RESERVED",
           "ECS_UNBOUND", "ECS_VIRQ", "BackendEventChannels", "BackendPort", "Channel",
           "EvtchnError", "EvtchnHost", "GuestEventChannels", "Injector"]

STATUS_OF = {ECS_FREE: EC.EVTCHNSTAT_closed, ECS_RESERVED: EC.EVTCHNSTAT_closed,
             ECS_UNBOUND: EC.EVTCHNSTAT_unbound, ECS_INTERDOMAIN: EC.EVTCHNSTAT_interdomain,
             ECS_PIRQ: EC.EVTCHNSTAT_pirq, ECS_VIRQ: EC.EVTCHNSTAT_virq,
             ECS_IPI: EC.EVTCHNSTAT_ipi}

BUCKET = 64  # ports become valid 64 at a time, as Xen allocates buckets
DEFAULT_MAX_PORT = 1023  # libxl's default max_event_channels
PAGE = 4096


class EvtchnHost:
    """All event-channel tables of this process, by domid, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tables: dict[int, EventChannels] = {}

    def table(self, domid: int) -> EventChannels:
        t = self.tables.get(domid)
        if t is None or t.dead:
            raise EvtchnError(E.ESRCH, f"no domain {domid}")
        return t


class _FastSendPort(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int32), ("gen", ctypes.c_uint32)]


FAST_SEND_PORTS = EC.EVTCHN_2L_NR_CHANNELS


class _FastSendArea(ctypes.Structure):
    """struct fast_send of arch/x86/_vcpuloop.c (the same fields, in this order)."""

    _fields_ = [("gen", ctypes.c_uint32), ("busy", ctypes.c_uint32),
                ("ram_hva", ctypes.c_uint64), ("ram_end_addr", ctypes.c_uint64),
                ("nports", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("sends", ctypes.c_uint64),  # sends completed in C
                ("port", _FastSendPort * FAST_SEND_PORTS)]


class FastSend:
    """The guest's ports whose EVTCHNOP_send a vCPU thread may complete in C, without the
    GIL: interdomain ports whose peer is a dom0 backend in this process, where Xen's send
    is nothing but a kick of the backend's eventfd (BackendEventChannels.set_pending).
    A port is entered here by the Python send that found it so (send() below), and every
    entry is dropped at once (`gen` bumped) whenever any port is closed, before the
    backend's eventfd can be closed: the C side (_vcpuloop.c) writes an eventfd only
    between `busy` up and down, and invalidate() waits for `busy` to drop, so it never
    writes one that was closed (or reused). The C side walks the guest's page tables to
    read the port; anything it does not handle (another mode, memory beyond the simple
    RAM window, a port not entered) takes the Python path as before."""

    def __init__(self, memory: GuestMemory | None = None) -> None:
        self.area = _FastSendArea(gen=1, nports=FAST_SEND_PORTS)
        cell = getattr(getattr(memory, "p2m", None), "fast_end_cell", None)
        if cell is not None:  # without it: no RAM the C side may read, never taken
            self.area.ram_hva, self.area.ram_end_addr = memory.hva, ctypes.addressof(cell)
        self.addr = ctypes.addressof(self.area)
        self._gen_addr = self.addr + _FastSendArea.gen.offset
        self._busy_addr = self.addr + _FastSendArea.busy.offset

    def enter(self, port: int, fd: int) -> None:
        """Under the host lock: port's send is a write to eventfd fd until the next
        invalidate()."""
        if 0 < port < FAST_SEND_PORTS and self.area.ram_end_addr:
            p = self.area.port[port]
            if p.gen != self.area.gen or p.fd != fd:
                p.fd = fd  # x86 keeps the order of these two stores
                p.gen = self.area.gen

    def invalidate(self) -> None:
        """Under the host lock: drop every entry; returns once no vCPU thread may still
        write an eventfd it looked up before (the caller may close it then)."""
        old = self.area.gen
        if old == 0xFFFFFFFF:  # wrapping to 1: no entry of an old generation 1 may revive
            ctypes.memset(self.addr + _FastSendArea.port.offset, 0, _FastSendArea.port.size)
        atomic.cmpxchg32(self._gen_addr, old, (old + 1) & 0xFFFFFFFF or 1)  # locked: a fence
        while atomic.read_u32(self._busy_addr):
            pass  # a vCPU thread is inside one write(2)


class EventChannels:
    """One domain's port table and the operations of event_channel.c on it."""

    fast_send: FastSend | None = None  # a guest's: sends a vCPU loop completes in C

    def __init__(self, host: EvtchnHost, domid: int, max_port: int = DEFAULT_MAX_PORT,
                 nr_vcpus: int = 1) -> None:
        self.host = host
        self.domid = domid
        self.max_port = max_port  # the toolstack's limit (Xen's max_evtchn_port)
        self.nr_vcpus = nr_vcpus
        self.ports: list[Channel] = [Channel() for _ in range(BUCKET)]
        self.ports[0].state = ECS_RESERVED  # port 0 is never allocated
        self.virq_to_port: dict[tuple[int, int], int] = {}  # (vcpu, virq) -> port
        self.dead = False
        with host.lock:
            host.tables[domid] = self

    # --- delivery (per kind of domain) -------------------------------------------------------

    def max_evtchns(self) -> int:
        """Ports the delivery ABI can address."""
        return EC.EVTCHN_2L_NR_CHANNELS

    def set_pending(self, port: int, vcpu: int) -> None:
        raise NotImplementedError

    def clear_pending(self, port: int) -> None:
        raise NotImplementedError

    def unmask(self, port: int) -> None:
        raise NotImplementedError

    def is_pending(self, port: int) -> bool:
        raise NotImplementedError

    def is_busy(self, port: int) -> bool:
        return False

    def fast_fd(self, port: int) -> int:
        """An eventfd that raising `port` amounts to, or -1 (FastSend)."""
        return -1

    def init_port(self, port: int) -> None:
        """evtchn_port_init: a port was just bound."""

    def set_port_priority(self, port: int, priority: int) -> None:
        raise EvtchnError(E.ENOSYS, "no priorities here")

    # --- helpers -------------------------------------------------------------------------------

    def valid(self, port: int) -> bool:
        return 0 <= port < len(self.ports)

    def chan(self, port: int) -> Channel:
        if not self.valid(port):
            raise EvtchnError(E.EINVAL, f"port {port} out of range")
        return self.ports[port]

    def _check_vcpu(self, vcpu: int) -> None:
        if not 0 <= vcpu < self.nr_vcpus:
            raise EvtchnError(E.ENOENT, f"no vCPU {vcpu}")

    def _resolve(self, domid: int) -> int:
        return self.domid if domid == DOMID_SELF else domid

    def get_free_port(self) -> int:
        """The lowest free port that is not still on a (FIFO) queue; the table grows a
        bucket at a time up to min(max_port, what the ABI addresses)."""
        limit = min(self.max_port, self.max_evtchns() - 1)
        for p in range(1, len(self.ports)):
            if p > limit:
                break
            if self.ports[p].state == ECS_FREE and not self.is_busy(p):
                return p
        p = len(self.ports)
        if p > limit:
            raise EvtchnError(E.ENOSPC, "no free event channel")
        self.ports.extend(Channel() for _ in range(min(BUCKET, limit + 1 - p)))
        return p

    def _bound(self, port: int) -> int:
        self.init_port(port)
        return port

    def _free(self, port: int) -> None:
        """evtchn_free: the port is FREE again and not pending (re-binding starts clean)."""
        self.clear_pending(port)
        self.ports[port] = Channel()

    # --- the operations -------------------------------------------------------------------------

    def alloc_unbound(self, remote_dom: int) -> int:
        with self.host.lock:
            port = self.get_free_port()
            ch = self.ports[port]
            ch.state, ch.remote_domid = ECS_UNBOUND, self._resolve(remote_dom)
            return self._bound(port)

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        with self.host.lock:
            rd = self.host.table(self._resolve(remote_dom))
            if not rd.valid(remote_port):
                raise EvtchnError(E.EINVAL, f"d{rd.domid} port {remote_port} out of range")
            rch = rd.ports[remote_port]
            if rch.state != ECS_UNBOUND or rch.remote_domid != self.domid:
                raise EvtchnError(E.EINVAL, f"d{rd.domid} port {remote_port} is not "
                                  f"unbound for d{self.domid}")
            lport = self.get_free_port()
            lch = self.ports[lport]
            lch.state, lch.remote_domid, lch.remote_port = ECS_INTERDOMAIN, rd.domid, remote_port
            rch.state, rch.remote_domid, rch.remote_port = ECS_INTERDOMAIN, self.domid, lport
            self.init_port(lport)
            # Notifications sent to the remote while unbound are lost: Xen conservatively
            # marks the new local port pending.
            self.set_pending(lport, lch.notify_vcpu)
            return lport

    def bind_virq(self, virq: int, vcpu: int) -> int:
        with self.host.lock:
            if not 0 <= virq < EC.NR_VIRQS:
                raise EvtchnError(E.EINVAL, f"VIRQ {virq} out of range")
            if virq not in EC.VCPU_VIRQS and vcpu != 0:
                raise EvtchnError(E.EINVAL, f"global VIRQ {virq} binds on vCPU 0 only")
            self._check_vcpu(vcpu)
            if (vcpu, virq) in self.virq_to_port:
                raise EvtchnError(E.EEXIST, f"VIRQ {virq} already bound on vCPU {vcpu}")
            port = self.get_free_port()
            ch = self.ports[port]
            ch.state, ch.virq, ch.notify_vcpu = ECS_VIRQ, virq, vcpu
            self.virq_to_port[(vcpu, virq)] = port
            return self._bound(port)

    def bind_ipi(self, vcpu: int) -> int:
        with self.host.lock:
            self._check_vcpu(vcpu)
            port = self.get_free_port()
            ch = self.ports[port]
            ch.state, ch.notify_vcpu = ECS_IPI, vcpu
            return self._bound(port)

    def close(self, port: int) -> None:
        with self.host.lock:
            ch = self.chan(port)
            if ch.state in (ECS_FREE, ECS_RESERVED):
                raise EvtchnError(E.EINVAL, f"port {port} is not in use")
            for t in self.host.tables.values():  # before any backend eventfd may close
                if t.fast_send is not None:
                    t.fast_send.invalidate()
            if ch.state == ECS_VIRQ:
                self.virq_to_port.pop((ch.notify_vcpu, ch.virq), None)
            elif ch.state == ECS_INTERDOMAIN:
                rd = self.host.tables.get(ch.remote_domid)
                if rd is not None and rd.valid(ch.remote_port):
                    rch = rd.ports[ch.remote_port]
                    if rch.state == ECS_INTERDOMAIN and rch.remote_domid == self.domid:
                        rch.state, rch.remote_domid, rch.remote_port = ECS_UNBOUND, self.domid, 0
                        rd.peer_closed(ch.remote_port)
            self._free(port)

    def peer_closed(self, port: int) -> None:
        """The other end of interdomain `port` went away (now unbound)."""

    def send(self, port: int) -> None:
        with self.host.lock:
            ch = self.chan(port)
            if ch.state == ECS_INTERDOMAIN:
                rd = self.host.tables.get(ch.remote_domid)
                if rd is not None:
                    rch = rd.ports[ch.remote_port]
                    rd.set_pending(ch.remote_port, rch.notify_vcpu)
                    if self.fast_send is not None:
                        fd = rd.fast_fd(ch.remote_port)
                        if fd >= 0:
                            self.fast_send.enter(port, fd)
            elif ch.state == ECS_IPI:
                self.set_pending(port, ch.notify_vcpu)
            elif ch.state == ECS_UNBOUND:
                pass  # silently dropped, as in Xen
            else:
                raise EvtchnError(E.EINVAL, f"cannot send on port {port}")

    def status(self, port: int) -> EC.evtchn_status:
        with self.host.lock:
            ch = self.chan(port)
            st = EC.evtchn_status(dom=self.domid, port=port, status=STATUS_OF[ch.state],
                                  vcpu=ch.notify_vcpu)
            if ch.state == ECS_UNBOUND:
                st.u.unbound.dom = ch.remote_domid
            elif ch.state == ECS_INTERDOMAIN:
                st.u.interdomain.dom = ch.remote_domid
                st.u.interdomain.port = ch.remote_port
            elif ch.state == ECS_VIRQ:
                st.u.virq = ch.virq
            return st

    def bind_vcpu(self, port: int, vcpu: int) -> None:
        with self.host.lock:
            ch = self.chan(port)
            self._check_vcpu(vcpu)
            if ch.state == ECS_VIRQ and ch.virq not in EC.VCPU_VIRQS:
                del self.virq_to_port[(ch.notify_vcpu, ch.virq)]
                self.virq_to_port[(vcpu, ch.virq)] = port
                ch.notify_vcpu = vcpu
            elif ch.state in (ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ):
                ch.notify_vcpu = vcpu
            else:
                raise EvtchnError(E.EINVAL, f"port {port} cannot move to another vCPU")

    def unmask_port(self, port: int) -> None:
        with self.host.lock:
            if not self.valid(port):
                raise EvtchnError(E.EINVAL, f"port {port} out of range")
            self.unmask(port)

    def set_priority(self, port: int, priority: int) -> None:
        """EVTCHNOP_set_priority: any valid port (Xen checks no state); the ABI decides
        (2-level: -ENOSYS, FIFO: 0..15)."""
        with self.host.lock:
            if not self.valid(port):
                raise EvtchnError(E.EINVAL, f"port {port} out of range")
            self.set_port_priority(port, priority)

    def reset(self) -> None:
        """EVTCHNOP_reset / domain destruction: close every port."""
        with self.host.lock:
            for port in range(1, len(self.ports)):
                if self.ports[port].state not in (ECS_FREE, ECS_RESERVED):
                    self.close(port)

    def destroy(self) -> None:
        with self.host.lock:
            self.reset()
            self.dead = True
            if self.host.tables.get(self.domid) is self:
                del self.host.tables[self.domid]

    # --- VIRQs -----------------------------------------------------------------------------------

    def send_virq(self, vcpu: int, virq: int) -> bool:
        """send_guest_vcpu_virq / send_guest_global_virq; False when nothing is bound."""
        with self.host.lock:
            if virq in EC.VCPU_VIRQS:
                port = self.virq_to_port.get((vcpu, virq))
            else:
                port = next((p for (_, q), p in self.virq_to_port.items() if q == virq), None)
            if not port:
                return False
            self.set_pending(port, self.ports[port].notify_vcpu)
            return True


# --- a guest's table: delivery through its ABI, the upcall ---------------------------------------


def _hva(memory: GuestMemory, gpa: int, n: int) -> int:
    """Host address of guest-physical [gpa, gpa+n) (one RAM region), or GuestFault. On
    every event raised (no import or isinstance here: measured ~1 us each)."""
    if memory.dirty is not None:  # pending bits are written there: log-dirty mode
        memory.dirty.mark_range(gpa, n)
    return memory.hva + memory._offset(gpa, n)


@dataclass
class VcpuEvtchn:
    """Per-vCPU event state Xen keeps in struct vcpu / arch.hvm."""

    upcall_vector: int = 0  # HVMOP_set_evtchn_upcall_vector
    poll: int | None = None  # None: not polling; -1: any port; else the one port polled
    dummy_info: ctypes.Array = field(default_factory=lambda: ctypes.create_string_buffer(64))


Injector = Callable[[int, int], None]  # (vcpu_id, vector): KVM_SIGNAL_MSI to that vCPU


class GuestEventChannels(EventChannels):
    """A guest's ports: delivery through its ABI (2-level or FIFO) and an upcall vector.

    Before the guest maps its shared_info page, events land in a private copy of it (Xen's
    shared_info exists from domain creation); mapping it with XENMAPSPACE_shared_info
    (shared_info.py) copies it into the guest. The page's layout (64- or 32-bit) is the
    domain's `has_32bit_shinfo` (shared_info.py).
    """

    def __init__(self, host: EvtchnHost, domain: Domain, inject: Injector | None = None,
                 max_port: int = DEFAULT_MAX_PORT) -> None:
        super().__init__(host, domain.domid, max_port, domain.max_vcpus)
        self.domain = domain
        self.inject = inject
        self.shadow = ctypes.create_string_buffer(PAGE)
        self.vstate = [VcpuEvtchn() for _ in range(domain.max_vcpus)]
        self.callback_vector = 0  # HVM_PARAM_CALLBACK_IRQ, type vector
        self.abi: EvtchnPortOps = EvtchnTwoLevel(self)
        self.fast_send = FastSend(domain.memory)

    # --- where the bits live ---------------------------------------------------------------

    def shared_info_addr(self) -> int:
        gpa = self.domain.shared_info_gpa
        if gpa is None:
            return ctypes.addressof(self.shadow)
        return _hva(self.domain.memory, gpa, PAGE)

    def vcpu_info_addr(self, vid: int) -> int:
        v = self.domain.vcpus[vid]
        size = shinfo_layout(self.domain).vcpu_info_size
        if v.vcpu_info_gpa is not None:
            return _hva(self.domain.memory, v.vcpu_info_gpa, size)
        if vid < XEN_LEGACY_MAX_VCPUS:
            return self.shared_info_addr() + vid * size
        return ctypes.addressof(self.vstate[vid].dummy_info)

    def shadow_contents(self) -> bytes:
        """What the guest's new shared_info page must start with (events so far)."""
        return self.shadow.raw

    # --- the delivery ABI ------------------------------------------------------------------

    def max_evtchns(self) -> int:
        return self.abi.max_ports()

    def set_pending(self, port: int, vcpu: int) -> None:
        self.abi.set_pending(port, self.ports[port], vcpu)

    def clear_pending(self, port: int) -> None:
        self.abi.clear_pending(port, self.ports[port])

    def is_pending(self, port: int) -> bool:
        return self.abi.is_pending(port)

    def is_masked(self, port: int) -> bool:
        return self.abi.is_masked(port)

    def is_busy(self, port: int) -> bool:
        return self.abi.is_busy(port)

    def unmask(self, port: int) -> None:
        self.abi.unmask(port, self.ports[port])

    def init_port(self, port: int) -> None:
        self.abi.init_port(port, self.ports[port])

    def set_port_priority(self, port: int, priority: int) -> None:
        self.abi.set_priority(port, self.ports[port], priority)

    @property
    def fifo(self) -> EvtchnFifo | None:
        return self.abi if isinstance(self.abi, EvtchnFifo) else None

    def init_control(self, vid: int, gfn: int, offset: int) -> int:
        """EVTCHNOP_init_control: vCPU vid's FIFO control block at gfn:offset; the first
        one switches the domain to FIFO (bound ports keep their pending state). Returns
        the LINK width for the guest (link_bits)."""
        with self.host.lock:
            self._check_vcpu(vid)
            if offset > PAGE - CONTROL_BLOCK_SIZE:
                raise EvtchnError(E.EINVAL, "the control block crosses a page boundary")
            if offset & 7:
                raise EvtchnError(E.EINVAL, "the control block is not 8-byte aligned")
            fifo = self.fifo
            if fifo is not None:
                fifo.map_control_block(vid, gfn, offset)
            else:
                fifo = EvtchnFifo(self)
                fifo.map_control_block(vid, gfn, offset)  # fails: still 2-level
                prev = [(p, self.abi.is_pending(p))
                        for p in range(1, min(len(self.ports), self.abi.max_ports()))]
                self.abi = fifo
                fifo.carry_over(prev)
            return EC.EVTCHN_FIFO_LINK_BITS

    def expand_array(self, gfn: int) -> None:
        """EVTCHNOP_expand_array: one more page of event words."""
        with self.host.lock:
            fifo = self.fifo
            if fifo is None:
                raise EvtchnError(E.EOPNOTSUPP, "not using the FIFO ABI")
            fifo.expand_array(gfn)

    def reset(self) -> None:
        """EVTCHNOP_reset also drops the FIFO control blocks and event array: the domain
        is back on 2-level (as Xen, for the guest's own reset)."""
        with self.host.lock:
            super().reset()
            if self.fifo is not None:
                self.abi = EvtchnTwoLevel(self)

    # --- the upcall ---------------------------------------------------------------------------

    def upcall_pending(self, vid: int) -> bool:
        off = shinfo_layout(self.domain).upcall_pending_off
        return atomic.test_bit(self.vcpu_info_addr(vid) + off, 0)

    def mark_events_pending(self, vid: int) -> None:
        """vcpu_mark_events_pending: on the 0 -> 1 edge of evtchn_upcall_pending only."""
        off = shinfo_layout(self.domain).upcall_pending_off
        if atomic.test_and_set_bit(self.vcpu_info_addr(vid) + off, 0):
            return
        self.assert_upcall(vid)

    def assert_upcall(self, vid: int) -> None:
        """hvm_assert_evtchn_irq: the vector into the vCPU's LAPIC (a running vCPU takes it
        without leaving KVM; a halted one wakes in KVM), and a vCPU sleeping in
        SCHEDOP_block/poll is woken."""
        vector = self.vstate[vid].upcall_vector or self.callback_vector
        if vector and self.inject is not None:
            self.inject(vid, vector)
        v = self.domain.vcpus[vid]
        if v.blocked:
            self.domain.wake(v)

    def vcpu_info_moved(self, vid: int) -> None:
        """After VCPUOP_register_vcpu_info, as Xen's map_vcpu_info: mark everything
        pending so nothing raised meanwhile is lost, and assert the upcall."""
        lay = shinfo_layout(self.domain)
        addr = self.vcpu_info_addr(vid)
        ctypes.memset(addr + lay.pending_sel_off, 0xFF, lay.word_bits // 8)
        ctypes.c_uint8.from_address(addr + lay.upcall_pending_off).value = 1
        self.assert_upcall(vid)

    def check_pollers(self, port: int) -> None:
        for vid, st in enumerate(self.vstate):
            if st.poll is not None and (st.poll < 0 or st.poll == port):
                st.poll = None
                self.domain.wake(self.domain.vcpus[vid])

    # --- guest-chosen upcall vectors ----------------------------------------------------------

    def set_upcall_vector(self, vid: int, vector: int) -> None:
        """HVMOP_set_evtchn_upcall_vector (Xen asserts the vector right away)."""
        if vector < 0x10:
            raise EvtchnError(E.EINVAL, f"vector {vector:#x} is reserved")
        self._check_vcpu(vid)
        self.vstate[vid].upcall_vector = vector
        self.assert_upcall(vid)

    def set_callback_via(self, value: int) -> None:
        """HVM_PARAM_CALLBACK_IRQ: only the vector type (2) can be delivered on KVM here;
        GSI/INTx types are recorded (hvm.py) but deliver nothing."""
        from .public.hvm_op_evtchn import HVM_PARAM_CALLBACK_TYPE_VECTOR

        vector = value & 0xFF if value >> 56 == HVM_PARAM_CALLBACK_TYPE_VECTOR else 0
        self.callback_vector = vector
        if vector:
            for vid, v in enumerate(self.domain.vcpus):
                if v.online and self.upcall_pending(vid):
                    self.assert_upcall(vid)

    # --- blocking ---------------------------------------------------------------------------------

    def events_need_delivery(self, vid: int) -> bool:
        """An upcall is pending and the guest has a vector to take it on (HVM's
        local_events_need_delivery, minus the guest's interrupt flag)."""
        return bool(self.vstate[vid].upcall_vector or self.callback_vector) and \
            self.upcall_pending(vid)

    def poll_ready(self, vid: int, ports: list[int]) -> bool:
        return any(self.is_pending(p) for p in ports)


# --- dom0's table: pyxen's backends ------------------------------------------------------------


class BackendPort:
    """dom0's end of an event channel, for a backend in pyxen: `fileno()` is an eventfd
    that becomes readable when the guest notifies; `notify()` kicks the guest."""

    def __init__(self, table: BackendEventChannels, port: int) -> None:
        self.table = table
        self.port = port
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    @property
    def state(self) -> int:
        with self.table.host.lock:
            return self.table.ports[self.port].state if not self.closed else ECS_FREE

    def notify(self) -> None:
        """EVTCHNOP_send from dom0 (dropped while unbound, as in Xen)."""
        self.table.send(self.port)

    def consume(self) -> int:
        """Number of notifications since the last call (0 if none); never blocks."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def wait(self, timeout: float | None = None) -> int:
        """Block until notified (or timeout); returns consume()."""
        r, _, _ = select.select([self.fd], [], [], timeout)
        return self.consume() if r else 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.table.close(self.port)
        except EvtchnError:
            pass
        self.closed = True
        os.close(self.fd)


class BackendEventChannels(EventChannels):
    """dom0's port table in this process: each bound port is a BackendPort."""

    def __init__(self, host: EvtchnHost, domid: int = 0) -> None:
        super().__init__(host, domid, max_port=EC.EVTCHN_2L_NR_CHANNELS - 1, nr_vcpus=1)
        self.endpoints: dict[int, BackendPort] = {}

    def set_pending(self, port: int, vcpu: int) -> None:
        ep = self.endpoints.get(port)
        if ep is not None and not ep.closed:
            atomic.eventfd_signal(ep.fd)  # keeps the GIL: see there

    def clear_pending(self, port: int) -> None:
        ep = self.endpoints.get(port)
        if ep is not None and not ep.closed:
            ep.consume()

    def is_pending(self, port: int) -> bool:
        return False

    def fast_fd(self, port: int) -> int:
        ep = self.endpoints.get(port)
        return ep.fd if ep is not None and not ep.closed else -1

    def unmask(self, port: int) -> None:
        pass

    def peer_closed(self, port: int) -> None:
        """Wake the backend so it sees its port became unbound (guest closed or died)."""
        self.set_pending(port, 0)

    def _endpoint(self, port: int) -> BackendPort:
        ep = BackendPort(self, port)
        self.endpoints[port] = ep
        return ep

    def _free(self, port: int) -> None:
        super()._free(port)
        self.endpoints.pop(port, None)

    def open_unbound(self, remote_dom: int) -> BackendPort:
        """A dom0 port that guest `remote_dom` may bind with EVTCHNOP_bind_interdomain."""
        with self.host.lock:
            return self._endpoint(self.alloc_unbound(remote_dom))

    def connect(self, remote_dom: int, remote_port: int) -> BackendPort:
        """Bind to the guest's unbound port (allocated for dom0), as a backend does.
        The endpoint starts notified, as Xen marks a freshly bound port pending."""
        with self.host.lock:
            port = self.get_free_port()
            ep = self._endpoint(port)
            try:
                got = self.bind_interdomain(remote_dom, remote_port)
            except EvtchnError:
                self.endpoints.pop(port, None)
                os.close(ep.fd)
                raise
            assert got == port
            return ep


# --- hypercalls ----------------------------------------------------------------------------------

from .hypercall import HypercallContext  # noqa: E402

EVTCHN_OP_UNION_OFF = EC.evtchn_op.u.offset


def guest_evtchn(d: Domain) -> GuestEventChannels | None:
    return getattr(d, "evtchn", None)


def _own(d: Domain, dom: int) -> None:
    try:
        xsm_target(d, dom)
    except XsmDenied as e:
        raise EvtchnError(e.errno, f"d{d.domid} may not act on d{dom}'s event channels") \
            from None


def evtchn_op(ctx: HypercallContext, cmd: int, arg: int) -> int:
    ev = guest_evtchn(ctx.domain)
    if ev is None:
        return -E.ENOSYS
    g = ctx.guest
    try:
        if cmd == EC.EVTCHNOP_send:
            ev.send(g.read_struct(arg, EC.evtchn_send).port)
        elif cmd == EC.EVTCHNOP_unmask:
            ev.unmask_port(g.read_struct(arg, EC.evtchn_unmask).port)
        elif cmd == EC.EVTCHNOP_alloc_unbound:
            au = g.read_struct(arg, EC.evtchn_alloc_unbound)
            _own(ctx.domain, au.dom)
            au.port = ev.alloc_unbound(au.remote_dom)
            g.write_struct(arg, au)
        elif cmd == EC.EVTCHNOP_bind_interdomain:
            bi = g.read_struct(arg, EC.evtchn_bind_interdomain)
            bi.local_port = ev.bind_interdomain(bi.remote_dom, bi.remote_port)
            g.write_struct(arg, bi)
        elif cmd == EC.EVTCHNOP_bind_virq:
            bv = g.read_struct(arg, EC.evtchn_bind_virq)
            bv.port = ev.bind_virq(bv.virq, bv.vcpu)
            g.write_struct(arg, bv)
        elif cmd == EC.EVTCHNOP_bind_ipi:
            bp = g.read_struct(arg, EC.evtchn_bind_ipi)
            bp.port = ev.bind_ipi(bp.vcpu)
            g.write_struct(arg, bp)
        elif cmd == EC.EVTCHNOP_close:
            ev.close(g.read_struct(arg, EC.evtchn_close).port)
        elif cmd == EC.EVTCHNOP_status:
            st = g.read_struct(arg, EC.evtchn_status)
            _own(ctx.domain, st.dom)
            out = ev.status(st.port)
            out.dom = st.dom
            g.write_struct(arg, out)
        elif cmd == EC.EVTCHNOP_bind_vcpu:
            bc = g.read_struct(arg, EC.evtchn_bind_vcpu)
            ev.bind_vcpu(bc.port, bc.vcpu)
        elif cmd == EC.EVTCHNOP_reset:
            _own(ctx.domain, g.read_struct(arg, EC.evtchn_reset).dom)
            ev.reset()
        elif cmd == EC.EVTCHNOP_bind_pirq:
            return -E.EINVAL  # a PVH domU has no physical IRQs (nr_pirqs = 0)
        elif cmd == EC.EVTCHNOP_init_control:
            ic = g.read_struct(arg, EC.evtchn_init_control)
            ic.link_bits = ev.init_control(ic.vcpu, ic.control_gfn, ic.offset)
            g.write_struct(arg, ic)
        elif cmd == EC.EVTCHNOP_expand_array:
            ev.expand_array(g.read_struct(arg, EC.evtchn_expand_array).array_gfn)
        elif cmd == EC.EVTCHNOP_set_priority:
            sp = g.read_struct(arg, EC.evtchn_set_priority)
            ev.set_priority(sp.port, sp.priority)
        else:
            return -E.ENOSYS
    except EvtchnError as e:
        return -e.errno
    return 0


def do_event_channel_op(ctx: HypercallContext) -> int:
    return evtchn_op(ctx, ctx.sarg(0), ctx.arg(1))


def do_event_channel_op_compat(ctx: HypercallContext) -> int:
    """The pre-3.2 form: one struct evtchn_op {cmd; union} in guest memory."""
    cmd = int.from_bytes(ctx.guest.read(ctx.arg(0), 4), "little")
    return evtchn_op(ctx, cmd, ctx.arg(0) + EVTCHN_OP_UNION_OFF)


# --- SCHEDOP_block / SCHEDOP_poll --------------------------------------------------------------


def block(d: Domain, v: VCPU, irq_on: bool = True) -> None:
    """SCHEDOP_block: sleep until an event arrives; at once if one already needs
    delivery (an upcall pending and the guest's interrupts on: irq_on is RFLAGS.IF)."""
    ev = guest_evtchn(d)
    if ev is None:
        d.block(v)
        return
    d.block(v, ready=lambda: irq_on and ev.events_need_delivery(v.id))


def poll(d: Domain, v: VCPU, ports: list[int], timeout_ns: int | None,
         irq_on: bool = True) -> int:
    """SCHEDOP_poll: 0 once one of `ports` is pending, an event needs delivery (with the
    guest's interrupts on), or the timeout (None: none) passes; -EINVAL for a port not
    in the domain's table (Xen's port_is_valid: allocated 64 at a time)."""
    ev = guest_evtchn(d)
    if ev is not None and irq_on and ev.events_need_delivery(v.id):
        return 0
    if any(not (0 <= p < EC.EVTCHN_2L_NR_CHANNELS if ev is None else ev.valid(p))
           for p in ports):
        return -E.EINVAL
    if ev is None:
        d.block(v, timeout_ns)
        return 0
    st = ev.vstate[v.id]
    st.poll = ports[0] if len(ports) == 1 else -1

    def ready() -> bool:
        return (st.poll is None or (irq_on and ev.events_need_delivery(v.id))
                or ev.poll_ready(v.id, ports))

    try:
        d.block(v, timeout_ns, ready=ready)
    finally:
        st.poll = None
    return 0
