"""The loopback device: a minimal dom0 backend for testing event channels and grants.

A guest offers it one granted page (`struct loopback_page` of guests/evtchn.h) and an
unbound event channel for dom0; the backend binds the channel, maps the page (only through
the grant table) and serves requests written into the page: echo, and mapping/copying
other grant refs on the guest's behalf so a test guest can watch Xen's grant checks and
GTF_reading/GTF_writing from its side. It kicks the guest once connected, and after each
request. It stops when the guest closes its end or the domain goes away.
"""

from __future__ import annotations

import os
import select
import struct
import threading
from collections.abc import Callable

from ..hypervisor.event_channel import ECS_INTERDOMAIN, BackendEventChannels, BackendPort
from ..hypervisor.grant_table import GrantError, GrantMapping, GrantTable
from ..hypervisor.public import grant_table as G

ECHO, MAP, UNMAP, COPY, PING = 1, 2, 3, 4, 5
HDR = struct.Struct("<IIIIIiII")  # seq cmd arg0 arg1 arg2 status done pad
DATA_OFF = HDR.size
DATA_LEN = 256
REPLY_OFF = DATA_OFF + DATA_LEN
STATUS_OFF, DONE_OFF = 20, 24


class LoopbackBackend:
    def __init__(self, dom0: BackendEventChannels, gnttab: GrantTable, guest_domid: int,
                 port: int, gref: int, report: Callable[[str], None] = lambda s: None) -> None:
        self.gnttab = gnttab
        self.report = report
        self.page: GrantMapping = gnttab.map(gref, domid=dom0.domid)
        try:
            self.port: BackendPort = dom0.connect(guest_domid, port)
        except Exception:
            gnttab.unmap(self.page)
            raise
        self.held: GrantMapping | None = None
        self.requests = 0
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="loopback")
        self._thread.start()
        self.port.notify()  # "connected"

    def _serve(self) -> None:
        buf = self.page.buf
        try:
            while True:
                r, _, _ = select.select([self.port.fileno(), self._stop_r], [], [])
                if self._stop_r in r:
                    return
                self.port.consume()
                if self.port.state != ECS_INTERDOMAIN:
                    self.report("loopback: the guest closed its end; stopping")
                    return
                seq, cmd, a0, a1, a2, _, done, _ = HDR.unpack_from(buf, 0)
                if seq == done:
                    continue
                status = self._handle(buf, cmd, a0, a1, a2)
                struct.pack_into("<i", buf, STATUS_OFF, status)
                struct.pack_into("<I", buf, DONE_OFF, seq)
                self.requests += 1
                self.port.notify()
        except Exception as e:  # noqa: BLE001 - a backend bug must not take the VMM down
            self.report(f"loopback: backend error: {type(e).__name__}: {e}")
        finally:
            self._teardown()

    def _handle(self, buf: memoryview, cmd: int, a0: int, a1: int, a2: int) -> int:
        try:
            if cmd == ECHO:
                n = min(a0, DATA_LEN)
                data = bytes(buf[DATA_OFF:DATA_OFF + n])
                buf[REPLY_OFF:REPLY_OFF + n] = bytes((b + 1) & 0xFF for b in data)
            elif cmd == MAP:
                if self.held is not None:
                    self.gnttab.unmap(self.held)
                    self.held = None
                self.held = self.gnttab.map(a0, domid=self.port.table.domid, readonly=bool(a1))
            elif cmd == UNMAP:
                if self.held is None:
                    return G.GNTST_bad_handle
                self.gnttab.unmap(self.held)
                self.held = None
            elif cmd == COPY:
                data = self.gnttab.copy_from(a0, a1, a2, domid=self.port.table.domid)
                n = min(len(data), DATA_LEN)
                buf[REPLY_OFF:REPLY_OFF + n] = data[:n]
            elif cmd != PING:
                return G.GNTST_general_error
        except GrantError as e:
            return e.status
        return G.GNTST_okay

    def _teardown(self) -> None:
        for m in (self.held, self.page):
            if m is not None:
                try:
                    self.gnttab.unmap(m)
                except GrantError:
                    pass  # the table was destroyed with the domain: already revoked
        self.held = None
        self.port.close()

    def close(self) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        self._thread.join(2)
