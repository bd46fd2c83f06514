"""FIFO event channel delivery (Xen's event_fifo.c; xen/event_channel.h "FIFO ABI").

Each port has a 32-bit event word in guest pages the guest hands over with
EVTCHNOP_expand_array (1024 words a page): PENDING, MASKED, LINKED, BUSY and a 17-bit LINK
to the next port of its queue. Each vCPU has a control block (EVTCHNOP_init_control: a
guest frame and offset) with a READY bit and a HEAD per priority (0 highest .. 15 lowest).
Xen keeps each queue's TAIL: raising a port links it behind the tail (or makes it the
head of an empty queue), sets the priority's READY bit and, on that bit's 0 -> 1 edge,
raises the upcall exactly as 2-level does. The guest consumes from the head, unlinking
words as it goes; so the word updates here are cmpxchg loops that tolerate the guest's
concurrent changes (it may only set/clear MASKED, clear PENDING, clear LINKED+LINK), with
BUSY held on the tail while relinking to keep the guest from unmasking under us.

The structures are the same for 32- and 64-bit guests. Switching from 2-level carries the
ports' pending state over: it is remembered per port and raised again once the event
array page that holds the port's word is added.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from . import atomic
from .event_port_ops import Channel, EvtchnError
from .guest_access import GuestFault
from .public import errno as E
from .public import event_channel as EC

if TYPE_CHECKING:
    from .event_channel import GuestEventChannels

PAGE = 4096
WORDS_PER_PAGE = PAGE // 4
MAX_ARRAY_PAGES = EC.EVTCHN_FIFO_NR_CHANNELS // WORDS_PER_PAGE
CONTROL_BLOCK_SIZE = 8 + 4 * EC.EVTCHN_FIFO_MAX_QUEUES
READY_OFF = EC.evtchn_fifo_control_block.ready.offset
HEAD_OFF = EC.evtchn_fifo_control_block.head.offset

PENDING = 1 << EC.EVTCHN_FIFO_PENDING
MASKED = 1 << EC.EVTCHN_FIFO_MASKED
LINKED = 1 << EC.EVTCHN_FIFO_LINKED
BUSY = 1 << EC.EVTCHN_FIFO_BUSY
LINK_MASK = EC.EVTCHN_FIFO_LINK_MASK
SET_LINK_TRIES = 4  # after BUSY is set the guest can change the tail at most this often


def _write_u32(addr: int, value: int) -> None:
    """write_atomic of an aligned u32 (a plain aligned store is atomic on x86)."""
    ctypes.c_uint32.from_address(addr).value = value


class EvtchnFifo:
    """evtchn_port_ops_fifo and the FIFO state of one guest's table."""

    name = "FIFO"

    def __init__(self, ev: GuestEventChannels) -> None:
        self.ev = ev
        nr = ev.domain.max_vcpus
        # Host addresses of the guest frames, resolved once when the guest hands them over
        # (Xen maps the page, not the gfn: a later change of the guest's physmap does not
        # move them).
        self.control: list[int | None] = [None] * nr  # control block per vCPU
        self.tails = [[0] * EC.EVTCHN_FIFO_MAX_QUEUES for _ in range(nr)]
        self.array: list[int] = []  # event array pages, in order
        # Per port: the queue (vCPU, priority) it was last linked on (Xen's fifo_lastq),
        # and pending state waiting for its event array page (Xen's evtchn->pending).
        self.lastq: dict[int, tuple[int, int]] = {}
        self.pending_without_word: set[int] = set()
        self.warnings = 0

    # --- guest memory ------------------------------------------------------------------------

    def word(self, port: int) -> int | None:
        """Host address of the port's event word; None beyond the array."""
        page = port >> 10
        if port < 0 or page >= len(self.array):
            return None
        return self.array[page] + 4 * (port & (WORDS_PER_PAGE - 1))

    def control_block(self, vid: int) -> int | None:
        return self.control[vid]

    def _map_page(self, gfn: int) -> int:
        """map_guest_page: a RAM frame of the guest (else -EINVAL), as a host address."""
        from .event_channel import _hva

        try:
            return _hva(self.ev.domain.memory, gfn << 12, PAGE)
        except GuestFault:
            raise EvtchnError(E.EINVAL, f"gfn {gfn:#x} is not guest RAM") from None

    # --- set-up ------------------------------------------------------------------------------

    def map_control_block(self, vid: int, gfn: int, offset: int) -> None:
        if self.control[vid] is not None:
            raise EvtchnError(E.EINVAL, f"vCPU {vid} already has a control block")
        self.control[vid] = self._map_page(gfn) + offset

    def carry_over(self, prev_ports: list[tuple[int, bool]]) -> None:
        """setup_ports: each bound port gets the default priority and keeps its 2-level
        pending bit (raised again when its event array page arrives)."""
        for port, pending in prev_ports:
            if pending:
                self.pending_without_word.add(port)
            self.ev.ports[port].priority = EC.EVTCHN_FIFO_PRIORITY_DEFAULT

    def expand_array(self, gfn: int) -> None:
        """add_page_to_event_array: the next 1024 event words; re-raise ports that became
        pending while their word did not exist."""
        if len(self.array) >= MAX_ARRAY_PAGES:
            raise EvtchnError(E.ENOSPC, "the event array is complete")
        first = len(self.array) * WORDS_PER_PAGE
        self.array.append(self._map_page(gfn))
        ev = self.ev
        for port in range(first, first + WORDS_PER_PAGE):
            if not ev.valid(port):
                break
            if port in self.pending_without_word:
                self.pending_without_word.discard(port)
                ch = ev.ports[port]
                self.set_pending(port, ch, ch.notify_vcpu)

    # --- evtchn_port_ops ------------------------------------------------------------------------

    def max_ports(self) -> int:
        return EC.EVTCHN_FIFO_NR_CHANNELS

    def init_port(self, port: int, ch: Channel) -> None:
        ch.priority = EC.EVTCHN_FIFO_PRIORITY_DEFAULT
        w = self.word(port)
        if w is not None and atomic.read_u32(w) & LINKED:
            self._warn(f"port {port} is still on a queue")

    def _warn(self, what: str) -> None:
        self.warnings += 1
        if self.warnings & (self.warnings - 1) == 0:  # 1, 2, 4, ...: seen, not a flood
            d = self.ev.domain
            d.log(f"d{d.domid}: FIFO event channels: {what} (x{self.warnings})")

    def _set_link(self, addr: int, link: int) -> bool:
        """Point the tail word's LINK at `link` iff it is still LINKED (the guest may be
        unlinking it right now); False when it was not (the queue became empty)."""
        w = atomic.read_u32(addr)
        busy = False
        for _ in range(1 + SET_LINK_TRIES):
            if not w & LINKED:
                if busy:
                    atomic.test_and_clear_bit(addr, EC.EVTCHN_FIFO_BUSY)
                return False
            new = (w & ~(BUSY | LINK_MASK)) | link
            seen = atomic.cmpxchg32(addr, w, new)
            if seen == w:
                return True  # BUSY (if we set it) is cleared by the same store
            if not busy:  # the guest is changing it: keep it from unmasking meanwhile
                atomic.test_and_set_bit(addr, EC.EVTCHN_FIFO_BUSY)
                busy = True
                seen = atomic.read_u32(addr)
            w = seen
        self._warn(f"port {link} not linked")
        atomic.test_and_clear_bit(addr, EC.EVTCHN_FIFO_BUSY)
        return True

    def set_pending(self, port: int, ch: Channel, vcpu: int) -> None:
        ev = self.ev
        w = self.word(port)
        if w is None:
            self.pending_without_word.add(port)
            return
        was_pending = atomic.test_and_set_bit(w, EC.EVTCHN_FIFO_PENDING)
        linked = True
        cb = self.control_block(vcpu)
        prio = ch.priority
        if cb is None:
            # The guest must not unmask before its control block exists: drop it.
            self._warn(f"vCPU {vcpu} has no control block")
        elif (not atomic.test_bit(w, EC.EVTCHN_FIFO_MASKED)
              and not atomic.test_and_set_bit(w, EC.EVTCHN_FIFO_LINKED)):
            old_v, old_p = self.lastq.get(port, (0, 0))
            if self.tails[old_v][old_p] == port:
                self.tails[old_v][old_p] = 0  # that queue is empty now
            self.lastq[port] = (vcpu, prio)
            linked = False
            tail = self.tails[vcpu][prio]
            if tail:
                tw = self.word(tail)
                linked = tw is not None and self._set_link(tw, port)
            if not linked:
                _write_u32(cb + HEAD_OFF + 4 * prio, port)
            self.tails[vcpu][prio] = port
        if not linked and cb is not None and not atomic.test_and_set_bit(cb + READY_OFF, prio):
            ev.mark_events_pending(vcpu)
        if not was_pending:
            ev.check_pollers(port)

    def clear_pending(self, port: int, ch: Channel) -> None:
        """Just PENDING: the guest unlinks (and skips) events that are no longer pending."""
        self.pending_without_word.discard(port)
        w = self.word(port)
        if w is not None:
            atomic.test_and_clear_bit(w, EC.EVTCHN_FIFO_PENDING)

    def unmask(self, port: int, ch: Channel) -> None:
        w = self.word(port)
        if w is None:
            return
        atomic.test_and_clear_bit(w, EC.EVTCHN_FIFO_MASKED)
        if atomic.test_bit(w, EC.EVTCHN_FIFO_PENDING):
            self.set_pending(port, ch, ch.notify_vcpu)

    def is_pending(self, port: int) -> bool:
        w = self.word(port)
        return w is not None and atomic.test_bit(w, EC.EVTCHN_FIFO_PENDING)

    def is_masked(self, port: int) -> bool:
        w = self.word(port)
        return w is None or atomic.test_bit(w, EC.EVTCHN_FIFO_MASKED)

    def is_busy(self, port: int) -> bool:
        w = self.word(port)
        return w is not None and atomic.test_bit(w, EC.EVTCHN_FIFO_LINKED)

    def set_priority(self, port: int, ch: Channel, priority: int) -> None:
        """Only future events use the new queue; one already linked stays where it is."""
        if priority > EC.EVTCHN_FIFO_PRIORITY_MIN:
            raise EvtchnError(E.EINVAL, f"priority {priority} out of range")
        ch.priority = priority

    def print_state(self, port: int, ch: Channel) -> str:
        w = self.word(port)
        if w is None:
            return "?     "
        v = atomic.read_u32(w)
        busy = "B" if v & BUSY else " "
        return f"{busy} {v & LINK_MASK:<4d}" if v & LINKED else f"{busy} -   "
