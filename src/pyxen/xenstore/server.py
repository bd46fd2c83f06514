"""XenstoreServer: the daemon — one event-loop thread serving Unix sockets and rings.

``state_dir/socket`` is the read-write socket and ``state_dir/socket_ro`` the read-only
one (writes get EROFS); both are dom0 connections, as in Xen. ``listen_as_domain()``
adds a socket whose connections carry an unprivileged domain's identity (tests, and
VMMs relaying a guest's xenbus traffic). Guest rings are bound with
``introduce_domain(domid, ring=RingTransport(...))``.

Everything runs on the loop thread; the public methods below are thread-safe and
marshal onto it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import select
import socket
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .connection import Connection, ProtocolViolation
from .core import Core
from .perms import Caller
from .persist import Persistence
from .quota import Quotas
from .ring import RingTransport

log = logging.getLogger("pyxen.xenstore")

RECV_SIZE = 65536
MAX_EVENTS = 256  # per epoll_wait (CPython allocates room for maxevents on every call)
EVENT_READ = select.EPOLLIN
EVENT_WRITE = select.EPOLLOUT


class Loop:
    """A small epoll loop: fd callbacks, cross-thread calls, deferred output flushes.

    One turn handles every ready fd, then writes the journal once (group commit: a
    reply never leaves before the change it acknowledges is journalled) and then
    flushes each transport that has output, one send each."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future | None]] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.register(self._wake_r, EVENT_READ, self._drain_calls)
        self.dirty: set[Any] = set()
        self.rbuf = memoryview(bytearray(RECV_SIZE))  # what every socket reads into
        self.before_flush: Callable[[], None] = lambda: None  # e.g. write the journal
        self.thread: threading.Thread | None = None
        self.running = False

    def in_loop(self) -> bool:
        return threading.current_thread() is self.thread

    def register(self, fd: int, mask: int, cb: Callable[[int], None]) -> None:
        self.ep.register(fd, mask)
        self.handlers[fd] = cb

    def modify(self, fd: int, mask: int) -> None:
        self.ep.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def watch_fd(self, fd: int, cb: Callable[[], None]) -> None:
        self.register(fd, EVENT_READ, lambda mask: cb())

    def unwatch_fd(self, fd: int) -> None:
        self.unregister(fd)

    def mark_dirty(self, transport: Any) -> None:
        self.dirty.add(transport)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        self._calls.append((fn, None))
        self._wake()

    def call(self, fn: Callable[[], Any], timeout: float | None = 30.0) -> Any:
        """Run fn on the loop thread and return its result (or raise its exception)."""
        if self.in_loop() or not self.running:
            return fn()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.append((fn, fut))
        self._wake()
        return fut.result(timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _drain_calls(self, mask: int) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        while self._calls:
            fn, fut = self._calls.popleft()
            try:
                res = fn()
            except BaseException as e:
                if fut is not None:
                    fut.set_exception(e)
                else:
                    log.exception("xenstored: deferred call failed")
            else:
                if fut is not None:
                    fut.set_result(res)

    def run(self) -> None:
        poll = self.ep.poll
        handlers = self.handlers
        dirty = self.dirty
        while self.running:
            for fd, mask in poll(1.0, MAX_EVENTS):
                cb = handlers.get(fd)
                if cb is None:
                    continue
                try:
                    cb(mask)
                except Exception:
                    log.exception("xenstored: event handler failed")
            try:
                self.before_flush()
            except Exception:
                log.exception("xenstored: journal write failed")
            while dirty:
                    t = dirty.pop()
                    try:
                        t.flush()
                    except Exception:
                        log.exception("xenstored: flush failed")

    def close(self) -> None:
        self.unregister(self._wake_r)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.ep.close()


class SocketTransport:
    """A Unix-socket client: non-blocking reads, one send per loop turn, backpressure."""

    def __init__(self, loop: Loop, sock: socket.socket, conn: Connection) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.conn = conn
        self.mask = EVENT_READ
        conn.wake_output = self._wake
        conn.transport = self  # type: ignore[attr-defined]
        loop.register(self.fd, self.mask, self.on_event)

    def _wake(self) -> None:
        self.loop.dirty.add(self)

    def on_event(self, mask: int) -> None:
        """Read what is there and answer it; the replies leave in the loop's flush."""
        conn = self.conn
        if mask & EVENT_READ:
            rbuf = self.loop.rbuf
            try:
                n = self.sock.recv_into(rbuf)
            except (BlockingIOError, InterruptedError):
                n = -1
            except OSError:
                n = 0
            if n == 0:
                conn.core.drop(conn)
                return
            if n > 0:
                conn.inbuf += rbuf[:n]
                try:
                    conn.process()
                except ProtocolViolation as e:
                    log.warning("%s: %s; disconnecting", conn.name, e)
                    conn.core.drop(conn)
                    return
        if mask & ~EVENT_READ:
            self.loop.dirty.add(self)  # writable again (or hung up): flush/retry

    def _send(self, data: bytes) -> int | None:
        """Bytes the socket took (0: it would block); None: the peer is gone and the
        connection has been dropped."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self.conn.core.drop(self.conn)
            return None

    def flush(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        # The loop journalled this turn's changes before flushing any transport
        # (before_flush): nothing is acknowledged before it is in the journal.
        out = conn.out
        if len(out) == 1 and not conn.inbuf and self.mask == EVENT_READ:
            # The usual turn: one message, sent whole, nothing more to read.
            data, is_reply = out[0]
            n = self._send(data)
            if n is None:
                return
            if n == len(data):
                out.clear()
                conn.out_bytes -= n
                if is_reply:
                    conn.pending_replies -= 1
                if not conn.can_process():
                    self.mask = EVENT_WRITE  # never leave a socket unwatched (hang-ups)
                    self.loop.modify(self.fd, EVENT_WRITE)
                return
            if n:
                conn.out_bytes -= n
                out[0] = (data[n:], is_reply)
        for _ in range(64):
            if out:
                if len(out) == 1:
                    data = out[0][0]
                else:
                    data = b"".join([m for m, _ in out])
                n = self._send(data)
                if n is None:
                    return
                conn.out_bytes -= n
                if n == len(data):
                    replies = sum([r for _, r in out]) if len(out) > 1 else int(out[0][1])
                    out.clear()
                    conn.pending_replies -= replies
                elif n:
                    done: list[bool] = []
                    while n and out:
                        msg, is_reply = out[0]
                        if n >= len(msg):
                            n -= len(msg)
                            out.popleft()
                            done.append(is_reply)
                        else:
                            out[0] = (msg[n:], is_reply)
                            n = 0
                    conn.sent(done)
            # Requests held back by the outstanding quota can go now.
            if conn.inbuf and conn.can_process() and not out:
                try:
                    conn.process()
                except ProtocolViolation:
                    conn.core.drop(conn)
                    return
                if out:
                    conn.core.flush_journal()  # these replies' changes, first
                    continue
            break
        want = (EVENT_READ if conn.can_process() else 0) | (EVENT_WRITE if out else 0)
        if want != self.mask:
            if not want:
                want = EVENT_WRITE  # never leave a socket unwatched (hang-ups)
            if want != self.mask:
                self.mask = want
                self.loop.modify(self.fd, want)

    def close(self) -> None:
        self.loop.unregister(self.fd)
        self.sock.close()


class XenstoreServer:
    """The xenstored daemon. ``start()`` serves in a background thread; ``stop()`` persists
    the tree and stops. Thread-safe in-process API for the host daemon below."""

    def __init__(self, state_dir: Path | str, quotas: Quotas | None = None, *,
                 persist: bool = True, keep_orphans: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.quotas = quotas or Quotas()
        self.socket_path = self.state_dir / "socket"
        self.ro_socket_path = self.state_dir / "socket_ro"
        self.core = Core(self.quotas, Persistence(self.state_dir) if persist else None,
                         keep_orphans=keep_orphans)
        self.core.close_transport = self._close_transport
        self.loop = Loop()
        self.loop.before_flush = self.core.flush_journal
        self._listeners: list[tuple[socket.socket, Path]] = []
        self._started = False

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> XenstoreServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.core.load()
        self._listen(self.socket_path, lambda: Caller(0, True), read_only=False)
        self._listen(self.ro_socket_path, lambda: Caller(0, True), read_only=True)
        self.loop.running = True
        self.loop.thread = threading.Thread(target=self.loop.run, name="xenstored",
                                            daemon=True)
        self.loop.thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and write the tree to state_dir."""
        if not self._started:
            return
        self._started = False
        self.loop.call(self._shutdown)
        self.loop.running = False
        self.loop._wake()
        if self.loop.thread is not None:
            self.loop.thread.join(10)
        self.core.snapshot()
        if self.core.persistence is not None:
            self.core.persistence.close()
        self.loop.close()

    def _shutdown(self) -> None:
        for conn in list(self.core.connections):
            self.core.drop(conn)
        for dom in self.core.domains.values():
            if dom.ring is not None:
                dom.ring.detach()
        for sock, path in self._listeners:
            self.loop.unwatch_fd(sock.fileno())
            sock.close()
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self._listeners.clear()

    def __enter__(self) -> XenstoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sockets ----------------------------------------------------------------------
    def _listen(self, path: Path, caller: Callable[[], Caller], *, read_only: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(1024)
        sock.setblocking(False)
        self._listeners.append((sock, path))

        def accept(mask: int) -> None:
            for _ in range(16):
                try:
                    cs, _addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:  # EMFILE etc.: keep serving the others
                    log.warning("xenstored: accept failed: %s", e)
                    return
                cs.setblocking(False)
                c = caller()
                conn = Connection(self.core, c, read_only=read_only,
                                  name=f"{path.name}:dom{c.domid}")
                self.core.register(conn)
                SocketTransport(self.loop, cs, conn)

        self.loop.register(sock.fileno(), EVENT_READ, accept)

    def listen_as_domain(self, domid: int, path: Path | str) -> Path:
        """Serve a socket whose clients act as unprivileged domain `domid` (owner checks,
        quotas, SET_TARGET rights, relative paths from /local/domain/<domid>)."""
        p = Path(path)
        self.loop.call(lambda: self._listen(p, lambda: self.core.caller_for(domid),
                                            read_only=False))
        return p

    def _close_transport(self, conn: Connection) -> None:
        t = getattr(conn, "transport", None)
        if t is not None:
            self.loop.dirty.discard(t)
            t.close()

    # -- domains (the host daemon's in-process API) ------------------------------------
    def introduce_domain(self, domid: int, ring: RingTransport | None = None, *,
                         gfn: int = 0, port: int = 0) -> None:
        """Register a domain (fires @introduceDomain); with `ring`, serve its page."""
        if ring is not None:
            ring.loop = self.loop
        self.loop.call(lambda: self.core.introduce(domid, gfn=gfn, port=port, ring=ring))

    def release_domain(self, domid: int) -> None:
        """Forget a domain (fires @releaseDomain); ENOENT if it was never introduced.
        As Xen 4.17: its nodes are removed (keep_orphans: given to dom0) and ACL entries
        naming it grant nothing any more, even to a new domain with the same id."""
        self.loop.call(lambda: self.core.release(domid))

    def fire_release_domain_watch(self, domid: int) -> None:
        """The domain has shut down (it is not released): fire @releaseDomain, as C
        xenstored does on VIRQ_DOM_EXC. Nothing happens for a domain never introduced."""
        def fire() -> None:
            if self.core.is_introduced(domid):
                self.core.fire_release_domain_watch()

        self.loop.call(fire)

    def is_domain_introduced(self, domid: int) -> bool:
        return bool(self.loop.call(lambda: self.core.is_introduced(domid)))

    def set_ring_mapper(self, mapper: Callable[[int, int, int], RingTransport | None]) -> None:
        """How wire INTRODUCE <domid>|<gfn>|<port> finds the guest's page: the
        event-channel/grant work supplies a mapper returning a RingTransport (or None)."""

        def wrapped(domid: int, gfn: int, port: int) -> RingTransport | None:
            ring = mapper(domid, gfn, port)
            if ring is not None:
                ring.loop = self.loop
            return ring

        self.core.ring_mapper = wrapped

    def snapshot(self) -> None:
        """Write the tree to state_dir now (stop() does it too)."""
        self.loop.call(self.core.snapshot)

    def stats(self) -> dict[str, int]:
        return self.loop.call(lambda: dict(self.core.stats, nodes=len(self.core.store.nodes),
                                           connections=len(self.core.connections)))
