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
import selectors
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


class Loop:
    """A small selector loop: fd callbacks, cross-thread calls, deferred output flushes."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future | None]] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._drain_calls)
        self.dirty: set[Any] = set()
        self.before_flush: Callable[[], None] = lambda: None  # e.g. write the journal
        self.thread: threading.Thread | None = None
        self.running = False

    def in_loop(self) -> bool:
        return threading.current_thread() is self.thread

    def watch_fd(self, fd: int, cb: Callable[[], None]) -> None:
        self.sel.register(fd, selectors.EVENT_READ, lambda mask: cb())

    def unwatch_fd(self, fd: int) -> None:
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

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
        select = self.sel.select
        dirty = self.dirty
        while self.running:
            for key, mask in select(1.0):
                try:
                    key.data(mask)
                except Exception:
                    log.exception("xenstored: event handler failed")
                self.before_flush()
                while dirty:
                    t = dirty.pop()
                    try:
                        t.flush()
                    except Exception:
                        log.exception("xenstored: flush failed")

    def close(self) -> None:
        self.sel.unregister(self._wake_r)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.sel.close()


class SocketTransport:
    """A Unix-socket client: non-blocking reads, batched writes, backpressure."""

    def __init__(self, loop: Loop, sock: socket.socket, conn: Connection) -> None:
        self.loop = loop
        self.sock = sock
        self.conn = conn
        self.mask = selectors.EVENT_READ
        conn.wake_output = self._wake
        conn.transport = self  # type: ignore[attr-defined]
        loop.sel.register(sock, self.mask, self.on_event)

    def _wake(self) -> None:
        self.loop.dirty.add(self)

    def on_event(self, mask: int) -> None:
        conn = self.conn
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                conn.core.drop(conn)
                return
            if data:
                try:
                    conn.feed(data)
                except ProtocolViolation as e:
                    log.warning("%s: %s; disconnecting", conn.name, e)
                    conn.core.drop(conn)
                    return
        self.flush()

    def flush(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        conn.core.flush_journal()  # nothing is acknowledged before it is journaled
        for _ in range(64):
            out = conn.out
            if out:
                data = out[0][0] if len(out) == 1 else b"".join(m for m, _ in out)
                try:
                    n = self.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    conn.core.drop(conn)
                    return
                conn.out_bytes -= n
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
            if conn.inbuf and conn.can_process() and not conn.out:
                try:
                    conn.process()
                except ProtocolViolation:
                    conn.core.drop(conn)
                    return
                if conn.out:
                    continue
            break
        want = (selectors.EVENT_READ if conn.can_process() else 0) | (
            selectors.EVENT_WRITE if conn.out else 0)
        if want != self.mask:
            self.mask = want
            if want:
                self.loop.sel.modify(self.sock, want, self.on_event)
            else:
                self.loop.sel.modify(self.sock, selectors.EVENT_WRITE, self.on_event)
                self.mask = selectors.EVENT_WRITE

    def close(self) -> None:
        try:
            self.loop.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
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
        if self.core.persistence is not None:
            self.loop.before_flush = self.core.persistence.flush
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

        self.loop.sel.register(sock, selectors.EVENT_READ, accept)

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
