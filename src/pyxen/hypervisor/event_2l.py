"""2-level event channel delivery (Xen's event_2l.c): a pending and a mask bit per port in
shared_info, a selector bit per word of them in the vCPU's vcpu_info.

Bit operations are locked byte operations on the guest's page (hypervisor/atomic.py): the
guest clears the same bits concurrently. Word size follows the domain's shared_info
layout (shared_info.py): a 32-bit guest's words are 32 bits, so port P's selector bit is
P / 32 and the ABI has 1024 ports; the pending/mask bitmaps themselves are bit P of a
little-endian bitmap in both layouts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import atomic
from .event_port_ops import Channel, EvtchnError
from .public import errno as E
from .shared_info import ShinfoLayout, shinfo_layout

if TYPE_CHECKING:
    from .event_channel import GuestEventChannels


class EvtchnTwoLevel:
    """evtchn_port_ops_2l for one guest's table."""

    name = "2-level"

    def __init__(self, ev: GuestEventChannels) -> None:
        self.ev = ev

    def max_ports(self) -> int:
        bits = shinfo_layout(self.ev.domain).word_bits
        return bits * bits

    def init_port(self, port: int, ch: Channel) -> None:
        pass

    def _sel_bit(self, vcpu: int, port: int, lay: ShinfoLayout) -> tuple[int, int]:
        """(address of vcpu's evtchn_pending_sel, bit for port's word)."""
        return self.ev.vcpu_info_addr(vcpu) + lay.pending_sel_off, port // lay.word_bits

    def set_pending(self, port: int, ch: Channel, vcpu: int) -> None:
        """evtchn_2l_set_pending: pending bit; unless masked the word's selector bit; on
        its 0 -> 1 edge the upcall (mark_events_pending); then pollers of the port."""
        ev = self.ev
        si = ev.shared_info_addr()
        lay = shinfo_layout(ev.domain)
        if atomic.test_and_set_bit(si + lay.pending_off, port):
            return
        if not atomic.test_bit(si + lay.mask_off, port):
            sel, bit = self._sel_bit(vcpu, port, lay)
            if not atomic.test_and_set_bit(sel, bit):
                ev.mark_events_pending(vcpu)
        ev.check_pollers(port)

    def clear_pending(self, port: int, ch: Channel) -> None:
        si = self.ev.shared_info_addr()
        atomic.test_and_clear_bit(si + shinfo_layout(self.ev.domain).pending_off, port)

    def unmask(self, port: int, ch: Channel) -> None:
        ev = self.ev
        si = ev.shared_info_addr()
        lay = shinfo_layout(ev.domain)
        if (atomic.test_and_clear_bit(si + lay.mask_off, port)
                and atomic.test_bit(si + lay.pending_off, port)):
            sel, bit = self._sel_bit(ch.notify_vcpu, port, lay)
            if not atomic.test_and_set_bit(sel, bit):
                ev.mark_events_pending(ch.notify_vcpu)

    def is_pending(self, port: int) -> bool:
        si = self.ev.shared_info_addr()
        return atomic.test_bit(si + shinfo_layout(self.ev.domain).pending_off, port)

    def is_masked(self, port: int) -> bool:
        si = self.ev.shared_info_addr()
        return atomic.test_bit(si + shinfo_layout(self.ev.domain).mask_off, port)

    def is_busy(self, port: int) -> bool:
        return False

    def set_priority(self, port: int, ch: Channel, priority: int) -> None:
        raise EvtchnError(E.ENOSYS, "the 2-level ABI has no priorities")

    def print_state(self, port: int, ch: Channel) -> str:
        sel, bit = self._sel_bit(ch.notify_vcpu, port, shinfo_layout(self.ev.domain))
        return str(int(atomic.test_bit(sel, bit)))
