"""console_io and the domain's console stream (console.sock).

As on Xen, CONSOLEIO_write is the guest's line to the hypervisor's own console: its bytes
become `(dN) ` lines of the hypervisor log (`xl dmesg`) and never enter the console
stream, which carries the PV console ring only (backends/console.py). The stream goes to
the attached client, or into a bounded buffer (oldest bytes dropped) that the next client
receives first; client bytes are console input, for CONSOLEIO_read until the guest uses
its ring.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .hypercall import HypercallContext
from .public import errno as E
from .public.xen import CONSOLEIO_read, CONSOLEIO_write

OUTPUT_BUFFER = 64 * 1024
INPUT_BUFFER = 16 * 1024
CHUNK = 128  # as Xen's guest_console_write: a chunk that faults is not written


class Console:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._out = bytearray()
        self._in = bytearray()
        self._listener: Callable[[bytes], None] | None = None

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener(data)
                return
            self._out += data
            if len(self._out) > OUTPUT_BUFFER:
                del self._out[: len(self._out) - OUTPUT_BUFFER]

    def attach(self, listener: Callable[[bytes], None] | None) -> bytes:
        """Route output to listener (None: buffer again); returns what was buffered."""
        with self._lock:
            self._listener = listener
            pending, self._out = bytes(self._out), bytearray()
            return pending

    def feed(self, data: bytes) -> None:
        with self._lock:
            self._in += data
            if len(self._in) > INPUT_BUFFER:
                del self._in[: len(self._in) - INPUT_BUFFER]

    def read(self, n: int) -> bytes:
        with self._lock:
            data = bytes(self._in[:n])
            del self._in[:n]
            return data

    def unread(self, data: bytes) -> None:
        with self._lock:
            self._in[:0] = data


def do_console_io(ctx: HypercallContext) -> int:
    cmd, count, buf = ctx.sarg(0), ctx.arg(1) & 0xFFFFFFFF, ctx.arg(2)
    d = ctx.domain
    if cmd == CONSOLEIO_write:
        done = 0
        while done < count:
            if done and not d.preempt_check(ctx.vcpu):
                return -E.EINTR
            n = min(CHUNK, count - done)
            d.guest_debug("console", ctx.guest.read(buf + done, n))
            done += n
        return 0
    if cmd == CONSOLEIO_read:
        if count >> 31:  # as Xen: the result must not overlap the error values
            return -E.E2BIG
        data = d.console.read(min(count, INPUT_BUFFER))
        try:
            ctx.guest.write(buf, data)
        except Exception:
            d.console.unread(data)
            raise
        return len(data)
    return -E.ENOSYS
