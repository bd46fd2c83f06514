"""One client connection: framing, request dispatch, replies and queued watch events.

Transport-neutral: a Unix socket or a guest's shared ring feeds bytes in with
``feed()`` and drains ``out``. A connection carries a Caller (its domain, privilege,
SET_TARGET target), its transactions and its watches. Hostile input gets an error
reply or, for a broken frame (length over XENSTORE_PAYLOAD_MAX), a disconnect; it
never raises into the event loop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import path as P
from . import store as S
from .perms import READ, Caller, format_perms, parse_perms
from .transaction import Transaction
from .watch import Watch
from .wire import (
    EQUOTA,
    HEADER,
    HEADER_SIZE,
    XENSTORE_PAYLOAD_MAX,
    Op,
    XenstoreError,
    error_payload,
    join_strings,
    split_strings,
)

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("pyxen.xenstore")

OK = b"OK\0"
PATH_CACHE = 4096  # READ paths remembered per connection
_READ = int(Op.READ)
_WRITE = int(Op.WRITE)
_TX_START = int(Op.TRANSACTION_START)
_TX_END = int(Op.TRANSACTION_END)
_WATCH_EVENT = int(Op.WATCH_EVENT)
_ERROR = int(Op.ERROR)
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack

# Operations that change the tree or the daemon: refused (EROFS) on the read-only socket.
_MUTATING = frozenset(int(o) for o in (
    Op.WRITE, Op.MKDIR, Op.RM, Op.SET_PERMS, Op.INTRODUCE, Op.RELEASE, Op.RESUME,
    Op.SET_TARGET, Op.CONTROL))
# Operations that act inside the transaction named by the header's tx_id.
_IN_TX = frozenset(int(o) for o in (
    Op.READ, Op.WRITE, Op.MKDIR, Op.RM, Op.DIRECTORY, Op.DIRECTORY_PART, Op.GET_PERMS,
    Op.SET_PERMS, Op.TRANSACTION_END))
_PRIVILEGED = frozenset(int(o) for o in (
    Op.INTRODUCE, Op.RELEASE, Op.RESUME, Op.SET_TARGET, Op.CONTROL))


class ProtocolViolation(Exception):
    """The peer broke framing; the transport must drop (socket) or flag (ring) it."""


class Connection:
    def __init__(self, core: Core, caller: Caller, *, read_only: bool = False,
                 name: str = "") -> None:
        self.core = core
        self.caller = caller
        self.read_only = read_only
        self.name = name or f"dom{caller.domid}"
        self.inbuf = bytearray()
        self.out: deque[tuple[bytes, bool]] = deque()  # (bytes, is_reply)
        self.out_bytes = 0
        self.pending_replies = 0
        self.transactions: dict[int, Transaction] = {}
        self.watches: list[Watch] = []
        self.closed = False
        self.wake_output = lambda: None  # set by the transport
        self._paths: dict[bytes, str] = {}  # raw path -> validated absolute path
        self._read_paths: dict[bytes, str] = {}  # whole READ payload -> the same
        self._after_reply: Callable[[Connection], None] | None = None  # WATCH's event

    # -- input ------------------------------------------------------------------------
    def can_process(self) -> bool:
        """Backpressure: a client that leaves `outstanding` replies unread is not read."""
        return not self.closed and self.pending_replies < self.core.quotas.outstanding

    def feed(self, data: bytes) -> None:
        """Take bytes from the transport and answer every complete request."""
        if data:
            self.inbuf += data
        self.process()

    def process(self) -> None:
        """Answer every complete request in inbuf (up to the outstanding quota).

        The hot path: a READ, and a WRITE of a node that exists, whose path this
        connection has sent before is answered inline (no dispatch, no re-validation
        of the path), in or out of a transaction; anything else, and anything that
        would fail, goes through dispatch(), which makes every check again. Replies
        are queued and leave in one send per loop turn (after the journal is written)."""
        buf = self.inbuf
        pos = 0
        nbuf = len(buf)
        core = self.core
        limit = core.quotas.outstanding
        paths = self._read_paths
        nodes = core.store.nodes
        caller = self.caller
        priv = caller.privileged
        queued = 0
        try:
            while nbuf - pos >= HEADER_SIZE and self.pending_replies < limit:
                op, req_id, tx_id, length = _unpack_header(buf, pos)
                if length > XENSTORE_PAYLOAD_MAX:
                    raise ProtocolViolation(f"payload length {length} over the maximum")
                end = pos + HEADER_SIZE + length
                if nbuf < end:
                    break
                payload = bytes(buf[pos + HEADER_SIZE:end])
                pos = end
                if op == _READ:
                    path = paths.get(payload)
                    if path is not None:
                        if not tx_id:
                            node = nodes.get(path)
                        else:
                            node = None
                            tx = self.transactions.get(tx_id)
                            # Unprivileged: only while the access cannot take the
                            # transaction past its nodes quota (dispatch's check).
                            if tx is not None and (
                                    priv or tx.touched() < core.quotas.transaction_nodes):
                                node = tx.get(path)
                        if node is not None and (priv or caller.perm_for(node.perms) & READ):
                            value = node.value
                            self._queue(_READ, req_id, tx_id, value, True)
                            queued += 1
                            continue
                elif op == _WRITE and not self.read_only:
                    i = payload.find(b"\0")
                    path = self._paths.get(payload[:i]) if i > 0 else None
                    if path is not None and tx_id:
                        # In a transaction: dom0 only (no transaction quotas to mind);
                        # what store.write() does to a node that exists, on the overlay.
                        tx = self.transactions.get(tx_id)
                        if priv and tx is not None and tx.get(path) is not None:
                            node = tx.get_for_update(path)
                            node.value = payload[i + 1:]
                            tx.put(path, node)
                            tx.events.append(S.Event(path, node.perms))
                            self._queue(_WRITE, req_id, tx_id, OK, True)
                            queued += 1
                            continue
                    elif path is not None:
                        node = nodes.get(path)
                        if node is not None:
                            value = payload[i + 1:]
                            if priv or self._may_write(node, value):
                                core.store.set_value(path, node, value)
                                if core.watches.by_path:
                                    core.fire_change(path, node.perms)
                                    if self.closed:
                                        break
                                self._queue(_WRITE, req_id, 0, OK, True)
                                queued += 1
                                continue
                elif op == _TX_START and priv and not tx_id:
                    # dom0 (no transaction quota): TRANSACTION_START cannot fail.
                    reply = core.start_transaction(self)
                    self._queue(_TX_START, req_id, 0, reply, True)
                    queued += 1
                    continue
                elif op == _TX_END and priv and tx_id and payload == b"T\0":
                    # dom0's commit that does not conflict cannot fail (no quotas).
                    tx = self.transactions.get(tx_id)
                    if tx is not None and not tx.conflicts():
                        core.end_transaction(self, tx, True)
                        if self.closed:
                            break
                        self._queue(_TX_END, req_id, tx_id, OK, True)
                        queued += 1
                        continue
                self.request(op, req_id, tx_id, payload)
                if self.closed:
                    break
        finally:
            if pos:
                del buf[:pos]
        if queued:
            core.stats["requests"] += queued
            self._check_output()

    def _may_write(self, node: S.Node, value: bytes) -> bool:
        """Would store.write() let this unprivileged caller set node's value? (If not,
        the slow path runs it, to fail with the right error.)"""
        caller = self.caller
        if caller.perm_for(node.perms) & S.WRITE != S.WRITE:
            return False
        q = self.core.quotas
        grow = len(value) - len(node.value)
        if self.core.store.memory(caller.domid) + grow > q.memory:
            return False
        return node.entry_size() + grow <= q.node_size

    def request(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        self.core.stats["requests"] += 1
        try:
            rop, reply = self.dispatch(op, tx_id, payload)
        except XenstoreError as e:
            self.send(_ERROR, req_id, tx_id, error_payload(e.name), reply=True)
            return
        except Exception:  # a bug must cost one request, never the daemon
            log.exception("%s: internal error on op %d", self.name, op)
            self.send(_ERROR, req_id, tx_id, error_payload("EIO"), reply=True)
            return
        self.send(rop, req_id, tx_id, reply, reply=True)
        after = self._after_reply
        if after is not None:
            self._after_reply = None
            after(self)

    # -- output -----------------------------------------------------------------------
    def send(self, op: int, req_id: int, tx_id: int, payload: bytes, *, reply: bool) -> None:
        if self.closed:
            return
        self._queue(op, req_id, tx_id, payload, reply)
        self._check_output()

    def _queue(self, op: int, req_id: int, tx_id: int, payload: bytes, reply: bool) -> None:
        """A message for the next flush; process() checks the output cap once per turn."""
        msg = _pack_header(op, req_id, tx_id, len(payload)) + payload
        self.out.append((msg, reply))
        self.out_bytes += len(msg)
        if reply:
            self.pending_replies += 1

    def _check_output(self) -> None:
        cap = (self.core.quotas.privileged_output if self.caller.privileged
               else self.core.quotas.memory)
        if self.out_bytes > cap:
            log.warning("%s: %d bytes of unread output, disconnecting", self.name,
                        self.out_bytes)
            self.core.drop(self)
            return
        self.wake_output()

    def watch_event(self, path: str, token: bytes) -> None:
        self.send(_WATCH_EVENT, 0, 0, path.encode() + b"\0" + token + b"\0", reply=False)

    def sent(self, n_messages_fully_written: list[bool]) -> None:
        """Bookkeeping after the transport wrote whole messages (flags: was_reply)."""
        for was_reply in n_messages_fully_written:
            if was_reply:
                self.pending_replies -= 1

    # -- dispatch ---------------------------------------------------------------------
    def _path(self, raw: bytes, special: bool = False) -> str:
        """The validated absolute path; remembered by its raw bytes (per connection:
        relative paths and the path-length quota depend on who asks)."""
        paths = self._paths
        if not special:
            path = paths.get(raw)
            if path is not None:
                return path
        c = self.caller
        path = P.resolve(raw, c.domid, special=special,
                         path_quota=None if c.privileged else self.core.quotas.path_length)
        if not special:
            if len(paths) >= PATH_CACHE:
                paths.clear()
            paths[raw] = path
        return path

    def _read_path(self, payload: bytes) -> str:
        """READ's path, also remembered by the whole payload, which is what process()
        looks up to answer the next READ of it inline."""
        path = self._path(self._one(payload))
        paths = self._read_paths
        if len(paths) >= PATH_CACHE:
            paths.clear()
        paths[payload] = path
        return path

    def _one(self, payload: bytes) -> bytes:
        args = split_strings(payload)
        if args is None:
            raise XenstoreError("EINVAL", "unterminated argument")
        return args[0]

    def _args(self, payload: bytes, n: int) -> list[bytes]:
        args = split_strings(payload)
        if args is None or len(args) < n:
            raise XenstoreError("EINVAL", "missing arguments")
        return args

    def dispatch(self, op: int, tx_id: int, payload: bytes) -> tuple[int, bytes]:
        """Check who may do `op` here, pick the view (the tree or the transaction
        `tx_id`) and run the op's handler; returns (reply type, reply payload)."""
        handler = _HANDLERS.get(op)
        if handler is None:
            raise XenstoreError("EINVAL", f"unknown operation {op}")
        if self.read_only and op in _MUTATING:
            raise XenstoreError("EROFS")
        if op in _PRIVILEGED and not self.caller.privileged:
            raise XenstoreError("EACCES")
        tx = None
        if tx_id and op in _IN_TX:
            tx = self.transactions.get(tx_id)
            if tx is None:
                raise XenstoreError("ENOENT", "no such transaction")
            if (not self.caller.privileged
                    and tx.touched() > self.core.quotas.transaction_nodes):
                raise XenstoreError(EQUOTA, "transaction nodes quota")
        return op, handler(self, tx, tx_id, payload)

    # -- one handler per message type: (tx or None, header tx_id, payload) -> reply ----
    def _view(self, tx: Transaction | None) -> S.View:
        return self.core.store if tx is None else tx

    def _op_read(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        return S.read(self._view(tx), self.caller, self._read_path(payload))

    def _op_write(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        i = payload.find(b"\0")
        if i < 0:
            raise XenstoreError("EINVAL", "WRITE without a path")
        path = self._path(payload[:i])
        core = self.core
        return core.changed(self, tx, S.write(self._view(tx), self.caller, path,
                                              payload[i + 1:], core.quotas))

    def _op_directory(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        names = S.directory(self._view(tx), self.caller, self._path(self._one(payload)))
        out = join_strings(names)
        if len(out) > XENSTORE_PAYLOAD_MAX:
            raise XenstoreError("E2BIG")
        return out

    def _op_directory_part(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        args = self._args(payload, 2)
        return self._directory_part(self._view(tx), self._path(args[0]), args[1])

    def _op_mkdir(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        path = self._path(self._one(payload))
        core = self.core
        return core.changed(self, tx, S.mkdir(self._view(tx), self.caller, path, core.quotas))

    def _op_rm(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        path = self._path(self._one(payload))
        return self.core.changed(self, tx, S.rm(self._view(tx), self.caller, path))

    def _op_get_perms(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        path = self._path(self._one(payload), special=True)
        if path[0] == "@":
            perms = self.core.special_perms[path]
            if not self.caller.perm_for(perms) & S.READ:
                raise XenstoreError("EACCES")
        else:
            perms = S.get_perms(self._view(tx), self.caller, path)
        out = join_strings(format_perms(perms))
        if len(out) > XENSTORE_PAYLOAD_MAX:
            raise XenstoreError("E2BIG")
        return out

    def _op_set_perms(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        args = self._args(payload, 2)
        path = self._path(args[0], special=True)
        perms = parse_perms([P.decode(a) for a in args[1:] if a != b""] or [""])
        core, caller = self.core, self.caller
        if path[0] == "@":
            if caller.perm_for(core.special_perms[path]) & S.WRITE_OWNER != S.WRITE_OWNER:
                raise XenstoreError("EACCES")
            core.special_perms[path] = perms
            core.persist_domains()
            return OK
        return core.changed(self, tx, S.set_perms(self._view(tx), caller, path, perms,
                                                  core.quotas))

    def _op_watch(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        args = self._args(payload, 2)
        reply = self.core.add_watch(self, args[0], args[1])
        self._after_reply = self.core.initial_watch_event
        return reply

    def _op_unwatch(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        args = self._args(payload, 2)
        return self.core.remove_watch(self, args[0], args[1])

    def _op_transaction_start(self, tx: Transaction | None, tx_id: int,
                              payload: bytes) -> bytes:
        if tx_id:
            raise XenstoreError("EBUSY", "already in a transaction")
        return self.core.start_transaction(self)

    def _op_transaction_end(self, tx: Transaction | None, tx_id: int,
                            payload: bytes) -> bytes:
        if tx is None:
            raise XenstoreError("ENOENT", "no such transaction")
        arg = self._one(payload)
        if arg not in (b"T", b"F"):
            raise XenstoreError("EINVAL", "TRANSACTION_END wants T or F")
        return self.core.end_transaction(self, tx, arg == b"T")

    def _op_reset_watches(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        self.core.reset_watches(self)
        return OK

    def _op_get_domain_path(self, tx: Transaction | None, tx_id: int,
                            payload: bytes) -> bytes:
        return P.domain_path(_domid(self._one(payload))).encode() + b"\0"

    def _op_is_domain_introduced(self, tx: Transaction | None, tx_id: int,
                                 payload: bytes) -> bytes:
        domid = _domid(self._one(payload))
        return b"T\0" if self.core.is_introduced(domid) else b"F\0"

    def _op_introduce(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        args = self._args(payload, 3)
        domid = _domid(args[0])
        gfn, port = _number(args[1]), _number(args[2])
        self.core.introduce(domid, gfn=gfn, port=port)
        return OK

    def _op_release(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        self.core.release(_domid(self._one(payload)))
        return OK

    def _op_resume(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        self.core.resume(_domid(self._one(payload)))
        return OK

    def _op_set_target(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        args = self._args(payload, 2)
        self.core.set_target(_domid(args[0]), _domid(args[1]))
        return OK

    def _op_control(self, tx: Transaction | None, tx_id: int, payload: bytes) -> bytes:
        args = split_strings(payload) or [b""]
        return self.core.control(self, [a.decode("latin-1") for a in args])

    def _directory_part(self, view: S.View, path: str, offset_raw: bytes) -> bytes:
        """Reply: generation, then as many whole child names as fit from byte `offset`;
        a final empty string marks the end of the list (Xen's DIRECTORY_PART)."""
        node = S.lookup(view, self.caller, path, S.READ)
        offset = _number(offset_raw)
        listing = join_strings(list(node.children))
        if offset > len(listing):
            raise XenstoreError("EINVAL", "offset past the end")
        head = str(node.gen).encode() + b"\0"
        room = XENSTORE_PAYLOAD_MAX - len(head) - 1
        chunk = listing[offset:]
        if len(chunk) <= room:
            return head + chunk + b"\0"
        cut = chunk.rfind(b"\0", 0, room) + 1
        if cut <= 0:
            raise XenstoreError("E2BIG")
        return head + chunk[:cut]


# Message type -> handler (ERROR and WATCH_EVENT are the daemon's to send: EINVAL).
_HANDLERS = {int(op): getattr(Connection, f"_op_{op.name.lower()}") for op in Op
             if op not in (Op.ERROR, Op.WATCH_EVENT)}

def _number(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 20:
        raise XenstoreError("EINVAL", "not a number")
    return int(raw)


def _domid(raw: bytes) -> int:
    n = _number(raw)
    if n >= 0x7FF0:
        raise XenstoreError("EINVAL", "bad domain id")
    return n
