"""A guest's xenstore ring: struct xenstore_domain_interface over any writable buffer.

The page is shared with a hostile guest, so every index is read once, checked, and a
ring whose indices are impossible (more than XENSTORE_RING_SIZE apart) or whose
requests break framing gets the page's ``error`` field set and is ignored until the
guest asks to reconnect (Xen 4.17's ``connection`` / ``error`` fields). Nothing a
guest writes raises into the daemon.

The event-channel layer plugs in through two ends:
- ``notify``: a callable the daemon invokes (on its loop thread) to signal the guest;
- ``kick()``: call it (any thread) when the guest signalled us; or pass ``kick_fd``,
  an eventfd/pipe the daemon polls and drains itself.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .connection import Connection, ProtocolViolation
from .perms import Caller
from .wire import (
    XENSTORE_CONNECTED,
    XENSTORE_ERROR_NONE,
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_RECONNECT,
    XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
)

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("pyxen.xenstore")

REQ = 0
RSP = XENSTORE_RING_SIZE
REQ_CONS = 2 * XENSTORE_RING_SIZE
REQ_PROD = REQ_CONS + 4
RSP_CONS = REQ_CONS + 8
RSP_PROD = REQ_CONS + 12
SERVER_FEATURES = REQ_CONS + 16
CONNECTION = REQ_CONS + 20
ERROR = REQ_CONS + 24
INTERFACE_SIZE = REQ_CONS + 28  # sizeof(struct xenstore_domain_interface)
MASK = XENSTORE_RING_SIZE - 1
_u32 = struct.Struct("<I")


class RingTransport:
    """Serves one domain's xenstore_domain_interface page."""

    def __init__(self, buf: Any, notify: Callable[[], None], *, kick_fd: int | None = None,
                 loop: Any = None) -> None:
        mv = memoryview(buf).cast("B")
        if len(mv) < INTERFACE_SIZE or mv.readonly:
            raise ValueError("a xenstore ring needs a writable buffer of at least "
                             f"{INTERFACE_SIZE} bytes")
        self.mem = mv
        self.notify = notify
        self.kick_fd = kick_fd
        self.loop = loop  # set by the server when bound
        self.conn: Connection | None = None
        self.core: Core | None = None
        self.broken = False

    # -- lifecycle (loop thread) ------------------------------------------------------
    def attach(self, core: Core, caller: Caller) -> None:
        self.core = core
        self._new_connection(caller)
        self._put(SERVER_FEATURES,
                  XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR)
        if self.loop is not None and self.kick_fd is not None:
            self.loop.watch_fd(self.kick_fd, self._on_kick_fd)
        self.service()

    def _new_connection(self, caller: Caller) -> None:
        assert self.core is not None
        if self.conn is not None:
            self.core.drop(self.conn)
        self.conn = Connection(self.core, caller, name=f"ring-dom{caller.domid}")
        self.conn.ring = self  # type: ignore[attr-defined]
        self.conn.wake_output = self._wake
        self.core.register(self.conn)
        self.broken = False

    def detach(self) -> None:
        if self.loop is not None and self.kick_fd is not None:
            self.loop.unwatch_fd(self.kick_fd)
        if self.conn is not None and self.core is not None:
            conn, self.conn = self.conn, None
            self.core.drop(conn)

    def kick(self) -> None:
        """The guest signalled us. Safe from any thread."""
        if self.loop is not None:
            self.loop.call_soon(self.service)
        else:
            self.service()

    def _on_kick_fd(self) -> None:
        try:
            os.read(self.kick_fd, 8)  # type: ignore[arg-type]
        except BlockingIOError:
            pass
        self.service()

    def _wake(self) -> None:
        if self.loop is not None:
            self.loop.mark_dirty(self)
        else:
            self.flush()

    # -- ring I/O (loop thread) -------------------------------------------------------
    def _get(self, off: int) -> int:
        return _u32.unpack_from(self.mem, off)[0]

    def _put(self, off: int, val: int) -> None:
        _u32.pack_into(self.mem, off, val & 0xFFFFFFFF)

    def _fail(self, code: int, why: str) -> None:
        log.warning("dom%s xenstore ring: %s; ignoring it until the guest reconnects",
                    self.conn.caller.domid if self.conn else "?", why)
        self._put(ERROR, code)
        self.broken = True
        if self.conn is not None:
            self.conn.inbuf.clear()
            self.conn.out.clear()
            self.conn.out_bytes = 0
            self.conn.pending_replies = 0
        self._signal()

    def _signal(self) -> None:
        try:
            self.notify()
        except Exception:
            log.exception("xenstore ring notify failed")

    def service(self) -> None:
        """Consume requests, answer them, produce responses; never raises."""
        try:
            self._service()
        except Exception:
            log.exception("xenstore ring: internal error")

    def _service(self) -> None:
        conn = self.conn
        if conn is None:
            return
        if self._get(CONNECTION) == XENSTORE_RECONNECT:
            self._reconnect()
            return
        if self.broken:
            return
        signal = False
        while True:
            moved = False
            if conn.can_process() and len(conn.inbuf) < 2 * XENSTORE_RING_SIZE + 8192:
                data = self._read_requests()
                if data is None:
                    return
                if data:
                    moved = signal = True
                    try:
                        conn.feed(data)
                    except ProtocolViolation as e:
                        self._fail(XENSTORE_ERROR_PROTO, str(e))
                        return
            elif conn.can_process():
                try:
                    conn.process()
                except ProtocolViolation as e:
                    self._fail(XENSTORE_ERROR_PROTO, str(e))
                    return
            wrote = self._write_responses()
            if wrote is None:
                return
            if wrote:
                moved = signal = True
            if not moved:
                break
        if signal:
            self._signal()

    def flush(self) -> None:
        try:
            if self.conn is None or self.broken:
                return
            if self._write_responses():
                self._signal()
            if self.conn is not None and self.conn.inbuf and self.conn.can_process():
                self._service()
        except Exception:
            log.exception("xenstore ring: internal error")

    def _read_requests(self) -> bytes | None:
        cons, prod = self._get(REQ_CONS), self._get(REQ_PROD)
        avail = (prod - cons) & 0xFFFFFFFF
        if avail > XENSTORE_RING_SIZE:
            self._fail(XENSTORE_ERROR_RINGIDX, f"request indices {cons}/{prod} impossible")
            return None
        if not avail:
            return b""
        start = cons & MASK
        first = min(avail, XENSTORE_RING_SIZE - start)
        data = bytes(self.mem[REQ + start:REQ + start + first])
        if first < avail:
            data += bytes(self.mem[REQ:REQ + avail - first])
        self._put(REQ_CONS, cons + avail)
        return data

    def _write_responses(self) -> bool | None:
        conn = self.conn
        if conn is None or not conn.out:
            return False
        conn.core.flush_journal()  # nothing is acknowledged before it is journaled
        cons, prod = self._get(RSP_CONS), self._get(RSP_PROD)
        used = (prod - cons) & 0xFFFFFFFF
        if used > XENSTORE_RING_SIZE:
            self._fail(XENSTORE_ERROR_RINGIDX, f"response indices {cons}/{prod} impossible")
            return None
        space = XENSTORE_RING_SIZE - used
        wrote = 0
        done: list[bool] = []
        while conn.out and space:
            msg, is_reply = conn.out[0]
            n = min(len(msg), space)
            pos = (prod + wrote) & MASK
            first = min(n, XENSTORE_RING_SIZE - pos)
            self.mem[RSP + pos:RSP + pos + first] = msg[:first]
            if first < n:
                self.mem[RSP:RSP + n - first] = msg[first:n]
            wrote += n
            space -= n
            conn.out_bytes -= n
            if n == len(msg):
                conn.out.popleft()
                done.append(is_reply)
            else:
                conn.out[0] = (msg[n:], is_reply)
        if wrote:
            self._put(RSP_PROD, prod + wrote)
        conn.sent(done)
        return wrote > 0

    def _reconnect(self) -> None:
        """The guest asked for a fresh start: forget all state, reset the page."""
        assert self.conn is not None
        caller = self.conn.caller
        self._new_connection(caller)
        for off in (REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD):
            self._put(off, 0)
        self._put(ERROR, XENSTORE_ERROR_NONE)
        self._put(CONNECTION, XENSTORE_CONNECTED)
        self._signal()
