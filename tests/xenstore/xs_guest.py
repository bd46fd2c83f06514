"""A test-side "guest": drives a xenstore ring page in a memfd, as a frontend would.

The daemon serves the same page through pyxen.xenstore.ring.RingTransport; the guest
signals with the transport's kick() (or an eventfd) and waits for the daemon's notify.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time

from pyxen.xenstore.ring import REQ_CONS, REQ_PROD, RSP, RSP_CONS, RSP_PROD
from pyxen.xenstore.wire import HEADER, XENSTORE_RING_SIZE, Op, XenstoreError

_u32 = struct.Struct("<I")
MASK = XENSTORE_RING_SIZE - 1


def new_page() -> mmap.mmap:
    fd = os.memfd_create("xenstore-ring")
    os.ftruncate(fd, 4096)
    page = mmap.mmap(fd, 4096)
    os.close(fd)
    return page


class RingGuest:
    def __init__(self, page: mmap.mmap) -> None:
        self.page = page
        self.notified = threading.Event()
        self.kick = lambda: None  # set once the daemon's end exists
        self.events: list[tuple[str, str]] = []
        self._req = 0
        self._rbuf = bytearray()

    def notify(self) -> None:  # the daemon's "event channel" into us
        self.notified.set()

    def get(self, off: int) -> int:
        return _u32.unpack_from(self.page, off)[0]

    def put(self, off: int, v: int) -> None:
        _u32.pack_into(self.page, off, v & 0xFFFFFFFF)

    def send_raw(self, data: bytes, timeout: float = 10) -> None:
        while data:
            cons, prod = self.get(REQ_CONS), self.get(REQ_PROD)
            space = XENSTORE_RING_SIZE - ((prod - cons) & 0xFFFFFFFF)
            if not space:
                self.notified.clear()
                self.kick()
                self.notified.wait(timeout)
                continue
            n = min(space, len(data))
            for i in range(n):
                self.page[(prod + i) & MASK] = data[i]
            self.put(REQ_PROD, prod + n)
            data = data[n:]
        self.kick()

    def _pull(self) -> None:
        cons, prod = self.get(RSP_CONS), self.get(RSP_PROD)
        if cons == prod:
            return
        while cons != prod:
            self._rbuf.append(self.page[RSP + (cons & MASK)])
            cons = (cons + 1) & 0xFFFFFFFF
        self.put(RSP_CONS, cons)
        self.kick()  # as xenbus does: tell the daemon there is response space again

    def recv_msg(self, timeout: float = 10) -> tuple[int, int, int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            self._pull()
            if len(self._rbuf) >= 16:
                op, rid, tx, ln = HEADER.unpack_from(self._rbuf)
                if len(self._rbuf) >= 16 + ln:
                    payload = bytes(self._rbuf[16:16 + ln])
                    del self._rbuf[:16 + ln]
                    return op, rid, tx, payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no response on the ring")
            self.notified.clear()
            self._pull()
            if len(self._rbuf) < 16 or len(self._rbuf) < 16 + HEADER.unpack_from(self._rbuf)[3]:
                self.notified.wait(min(left, 0.2))

    def call(self, op: int, payload: bytes, tx: int = 0) -> bytes:
        self._req += 1
        rid = self._req
        self.send_raw(HEADER.pack(op, rid, tx, len(payload)) + payload)
        while True:
            rop, r, _tx, reply = self.recv_msg()
            if rop == Op.WATCH_EVENT:
                p = reply.split(b"\0")
                self.events.append((p[0].decode(), p[1].decode()))
                continue
            assert r == rid, (r, rid)
            if rop == Op.ERROR:
                raise XenstoreError(reply.rstrip(b"\0").decode())
            return reply

    def read(self, path: str) -> bytes:
        return self.call(Op.READ, path.encode() + b"\0")

    def write(self, path: str, value: bytes) -> None:
        self.call(Op.WRITE, path.encode() + b"\0" + value)
