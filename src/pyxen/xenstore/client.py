"""XenstoreClient: a small synchronous xenstore client (libxenstore's role for hostd).

Requests are answered in order on one socket. Until the first watch, a call simply
sends and reads its reply. From the first watch on, a reader thread owns the socket's
read side and delivers watch events to a callback or a queue, and replies to waiting
callers, so events arrive while nothing else is going on.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .wire import HEADER, HEADER_SIZE, XENSTORE_PAYLOAD_MAX, Op, XenstoreError, split_strings

WatchCallback = Callable[[str, str], None]


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: tuple[int, bytes] | None = None


class XenstoreClient:
    def __init__(self, socket_path: str | Path, timeout: float | None = 30.0) -> None:
        self.path = str(socket_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.path)
        self._req = itertools.count(1)
        self._lock = threading.Lock()
        self._rbuf = bytearray()
        self._reader: threading.Thread | None = None
        self._pending: dict[int, _Pending] = {}
        self._watchers: dict[str, WatchCallback | queue.Queue] = {}
        self._closed = False
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()

    # -- plumbing ---------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)

    def __enter__(self) -> XenstoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = self._rbuf
        while len(buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("xenstored closed the connection")
            buf += chunk
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def _recv_msg(self) -> tuple[int, int, int, bytes]:
        op, req_id, tx_id, length = HEADER.unpack(self._recv_exact(HEADER_SIZE))
        return op, req_id, tx_id, self._recv_exact(length) if length else b""

    def _deliver_event(self, payload: bytes) -> None:
        parts = payload.split(b"\0")
        if len(parts) < 2:
            return
        path, token = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        target = self._watchers.get(token, self.events)
        if callable(target):
            try:
                target(path, token)
            except Exception:  # a caller's bug must not kill the reader
                import logging

                logging.getLogger("pyxen.xenstore").exception("watch callback failed")
        else:
            target.put((path, token))

    def _read_loop(self) -> None:
        try:
            while not self._closed:
                op, req_id, _tx, payload = self._recv_msg()
                if op == Op.WATCH_EVENT:
                    self._deliver_event(payload)
                    continue
                p = self._pending.pop(req_id, None)
                if p is not None:
                    p.reply = (op, payload)
                    p.event.set()
        except (OSError, ConnectionError):
            pass
        finally:
            for p in list(self._pending.values()):
                p.event.set()
            self._pending.clear()

    def _start_reader(self) -> None:
        with self._lock:
            if self._reader is None:
                self.sock.settimeout(None)
                self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                                name="xenstore-client")
                self._reader.start()

    def call(self, op: int, payload: bytes, tx: int = 0) -> bytes:
        """Send one request; return the reply payload or raise XenstoreError."""
        return self.call_many([(op, payload)], tx)[0]

    def call_many(self, requests: list[tuple[int, bytes]], tx: int = 0) -> list[bytes]:
        """Send the requests back to back and then take their replies: one round trip
        for all of them (xenstored answers a connection's requests in order). The
        replies in order; the first error is raised once every reply is in."""
        ids, msgs = [], []
        for op, payload in requests:
            if len(payload) > XENSTORE_PAYLOAD_MAX:
                raise XenstoreError("E2BIG")
            req_id = next(self._req) & 0xFFFFFFFF
            ids.append(req_id)
            msgs.append(HEADER.pack(op, req_id, tx, len(payload)) + payload)
        replies: dict[int, tuple[int, bytes]] = {}
        if self._reader is None:
            with self._lock:
                if self._reader is None:
                    self.sock.sendall(b"".join(msgs))
                    want = set(ids)
                    while want:
                        rop, rid, _tx, reply = self._recv_msg()
                        if rop == Op.WATCH_EVENT:
                            self._deliver_event(reply)
                        elif rid in want:
                            want.discard(rid)
                            replies[rid] = (rop, reply)
        if len(replies) != len(ids):  # the reader thread takes them
            pending = {rid: _Pending() for rid in ids}
            self._pending.update(pending)
            with self._lock:
                self.sock.sendall(b"".join(msgs))
            for rid, p in pending.items():
                if not p.event.wait(60) or p.reply is None:
                    raise ConnectionError("no reply from xenstored")
                replies[rid] = p.reply
        return [self._check(*replies[rid]) for rid in ids]

    @staticmethod
    def _check(op: int, reply: bytes) -> bytes:
        if op == Op.ERROR:
            raise XenstoreError(reply.rstrip(b"\0").decode("latin-1") or "EINVAL")
        return reply

    # -- the xenstore operations ------------------------------------------------------
    def read(self, path: str, tx: int = 0) -> bytes:
        return self.call(Op.READ, path.encode() + b"\0", tx)

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        if isinstance(value, str):
            value = value.encode()
        self.call(Op.WRITE, path.encode() + b"\0" + value, tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.call(Op.MKDIR, path.encode() + b"\0", tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self.call(Op.RM, path.encode() + b"\0", tx)

    def exists(self, path: str, tx: int = 0) -> bool:
        try:
            self.read(path, tx)
            return True
        except XenstoreError as e:
            if e.name == "ENOENT":
                return False
            raise

    def directory(self, path: str, tx: int = 0) -> list[str]:
        reply = self.call(Op.DIRECTORY, path.encode() + b"\0", tx)
        return [s.decode() for s in (split_strings(reply) or []) if s] if reply else []

    def directory_part(self, path: str, offset: int, tx: int = 0) -> tuple[int, list[str], bool]:
        """(generation, names, complete) from one DIRECTORY_PART call."""
        reply = self.call(Op.DIRECTORY_PART, path.encode() + b"\0%d\0" % offset, tx)
        parts = reply.split(b"\0")
        gen = int(parts[0])
        body = parts[1:]
        complete = len(body) >= 2 and body[-1] == b"" and body[-2] == b""
        names = [s.decode() for s in body if s]
        return gen, names, complete

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        reply = self.call(Op.GET_PERMS, path.encode() + b"\0", tx)
        return [s.decode() for s in (split_strings(reply) or []) if s]

    def set_perms(self, path: str, perms: list[str], tx: int = 0) -> None:
        payload = path.encode() + b"\0" + b"".join(p.encode() + b"\0" for p in perms)
        self.call(Op.SET_PERMS, payload, tx)

    def watch(self, path: str, token: str, callback: WatchCallback | queue.Queue | None = None
              ) -> None:
        """Watch path (and its subtree). Events go to callback(path, token), to the given
        queue as (path, token), or to self.events. It fires once right away (Xen)."""
        self._start_reader()
        if callback is not None:
            self._watchers[token] = callback
        self.call(Op.WATCH, path.encode() + b"\0" + token.encode() + b"\0")

    def unwatch(self, path: str, token: str) -> None:
        self.call(Op.UNWATCH, path.encode() + b"\0" + token.encode() + b"\0")
        self._watchers.pop(token, None)

    def reset_watches(self) -> None:
        self.call(Op.RESET_WATCHES, b"\0")
        self._watchers.clear()

    def transaction_start(self) -> int:
        return int(self.call(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, commit: bool = True) -> bool:
        """True if committed (or aborted as asked); False on EAGAIN: retry."""
        try:
            self.call(Op.TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
        except XenstoreError as e:
            if e.name == "EAGAIN":
                return False
            raise
        return True

    @contextlib.contextmanager
    def transaction(self) -> Iterator[int]:
        """``with c.transaction() as t:`` aborts on exception; raises XenstoreError
        ("EAGAIN") if the commit lost. Use run_transaction() to retry."""
        tx = self.transaction_start()
        try:
            yield tx
        except BaseException:
            with contextlib.suppress(XenstoreError, OSError):
                self.transaction_end(tx, False)
            raise
        if not self.transaction_end(tx, True):
            raise XenstoreError("EAGAIN")

    def run_transaction(self, fn: Callable[[int], object], retries: int = 100) -> object:
        for _ in range(retries):
            tx = self.transaction_start()
            try:
                result = fn(tx)
            except BaseException:
                with contextlib.suppress(XenstoreError, OSError):
                    self.transaction_end(tx, False)
                raise
            if self.transaction_end(tx, True):
                return result
        raise XenstoreError("EAGAIN", "transaction kept conflicting")

    def introduce(self, domid: int, gfn: int = 0, evtchn: int = 0) -> None:
        self.call(Op.INTRODUCE, b"%d\0%d\0%d\0" % (domid, gfn, evtchn))

    def release(self, domid: int) -> None:
        self.call(Op.RELEASE, b"%d\0" % domid)

    def resume(self, domid: int) -> None:
        self.call(Op.RESUME, b"%d\0" % domid)

    def set_target(self, domid: int, target: int) -> None:
        self.call(Op.SET_TARGET, b"%d\0%d\0" % (domid, target))

    def get_domain_path(self, domid: int) -> str:
        return self.call(Op.GET_DOMAIN_PATH, b"%d\0" % domid).rstrip(b"\0").decode()

    def is_domain_introduced(self, domid: int) -> bool:
        return self.call(Op.IS_DOMAIN_INTRODUCED, b"%d\0" % domid).rstrip(b"\0") == b"T"

    def control(self, *args: str) -> str:
        payload = b"".join(a.encode() + b"\0" for a in args)
        return self.call(Op.CONTROL, payload).rstrip(b"\0").decode("latin-1")
