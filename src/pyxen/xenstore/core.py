"""What spans connections: the tree, watches, transactions, domains, control, journal.

Runs only on the daemon's event-loop thread (no locks): the transports feed requests
to Connections, which call in here; the in-process API reaches it via Loop.call().
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import path as P
from . import store as S
from .perms import DOM0, DOM0_DEFAULT, READ, Caller, Perms, format_perms, ignore_domain, load_perms
from .persist import COMPACT_BYTES, Persistence
from .quota import Quotas
from .store import Event, Store
from .transaction import Transaction
from .watch import Watch, WatchTable
from .wire import EQUOTA, XenstoreError

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("pyxen.xenstore")
OK = b"OK\0"


@dataclass
class Domain:
    """An introduced domain: its ring (if mapped) and its SET_TARGET target."""

    domid: int
    gfn: int = 0
    port: int = 0
    target: int | None = None
    ring: Any = None  # ring.RingTransport once the guest's page is mapped

    def to_json(self) -> dict[str, Any]:
        return {"gfn": self.gfn, "port": self.port, "target": self.target}


class Core:
    def __init__(self, quotas: Quotas, persistence: Persistence | None = None, *,
                 keep_orphans: bool = False) -> None:
        self.quotas = quotas
        # C xenstored's -K/--keep-orphans: a released domain's nodes go to dom0
        # instead of being removed.
        self.keep_orphans = keep_orphans
        self.store = Store()
        self.watches = WatchTable()
        self.special_perms: dict[str, Perms] = {
            "@introduceDomain": DOM0_DEFAULT, "@releaseDomain": DOM0_DEFAULT}
        self.domains: dict[int, Domain] = {}
        self.connections: set[Connection] = set()
        self.persistence = persistence
        self.next_tx = 1
        self.trace = False
        # Hooks set by the server: close a connection's transport; map an INTRODUCE'd ring.
        self.close_transport: Callable[[Connection], None] = lambda conn: None
        self.ring_mapper: Callable[[int, int, int], Any] | None = None
        self.stats = {"requests": 0, "commits": 0, "conflicts": 0}

    # -- persistence ------------------------------------------------------------------
    def load(self) -> None:
        if self.persistence is None:
            return
        state = self.persistence.load()
        self.store.load(state["nodes"])
        for k, d in state["domains"].items():
            self.domains[int(k)] = Domain(int(k), d.get("gfn", 0), d.get("port", 0),
                                          d.get("target"))
        for k, v in state["special"].items():
            if k in self.special_perms:
                self.special_perms[k] = load_perms(v)
        self.persistence.snapshot(self.store, self._domains_json(), self._special_json())
        self.persistence.open_journal()

    def _domains_json(self) -> dict[str, Any]:
        return {str(d): dom.to_json() for d, dom in self.domains.items()}

    def _special_json(self) -> dict[str, list[str]]:
        return {k: format_perms(v) for k, v in self.special_perms.items()}

    def journal(self) -> None:
        """Append what changed in the committed tree since the last call, as one
        record (the loop calls it once per turn: group commit, before any reply)."""
        dirty = self.store.dirty
        if not dirty:
            return
        if self.persistence is not None:
            self.persistence.record_nodes(self.store, dirty)
            if self.persistence.journal_bytes > COMPACT_BYTES:
                self.snapshot()
        dirty.clear()

    def flush_journal(self) -> None:
        """Journal and write every change made so far; transports call it before any
        reply leaves, so nothing is acknowledged before it is in the journal."""
        if self.store.dirty:
            self.journal()
        if self.persistence is not None:
            self.persistence.flush()

    def persist_domains(self) -> None:
        if self.persistence is not None:
            self.persistence.record_domains(self._domains_json(), self._special_json())

    def snapshot(self) -> None:
        if self.persistence is not None:
            self.persistence.snapshot(self.store, self._domains_json(), self._special_json())

    # -- changes and watches ----------------------------------------------------------
    def changed(self, conn: Connection | None, tx: Transaction | None,
                events: list[Event]) -> bytes:
        if tx is not None:
            tx.events.extend(events)
        elif events:
            self.fire(events)
        return OK

    def fire(self, events: list[Event]) -> None:
        if not self.watches.by_path:
            return
        for ev in events:
            if ev.removed is None and ev.path[0] == "/":
                self.fire_change(ev.path, ev.perms)
                continue
            for w, p in self.watches.matches(ev):
                w.conn.watch_event(w.event_path(p), w.token)

    def fire_change(self, path: str, perms: Perms) -> None:
        """fire() of one change to a node that is not a removal: the watches on the
        node and on each ancestor, nearest first (WatchTable.matches' order), without
        building the event or walking a generator (the path of every watched WRITE)."""
        by_path = self.watches.by_path
        p = path
        while True:
            ws = by_path.get(p)
            if ws is not None:
                for w in ws:
                    conn = w.conn
                    if conn.caller.perm_for(perms) & READ:
                        conn.watch_event(w.event_path(path) if w.relative else path, w.token)
            if p == "/":
                return
            i = p.rfind("/")
            p = "/" if i <= 0 else p[:i]

    def add_watch(self, conn: Connection, raw_path: bytes, token: bytes) -> bytes:
        path = conn._path(raw_path, special=True)
        relative = not raw_path.startswith(b"/") and path[0] != "@"
        if self.watches.find(conn, path, token) is not None:
            raise XenstoreError("EEXIST")
        if not conn.caller.privileged and len(conn.watches) >= self.quotas.watches:
            raise XenstoreError(EQUOTA, "watch quota")
        w = Watch(conn, path, token, relative)
        self.watches.add(w)
        conn.watches.append(w)
        conn._initial_watch = w  # type: ignore[attr-defined]
        return OK

    def initial_watch_event(self, conn: Connection) -> None:
        """Xen fires every new watch once, right after the WATCH reply."""
        w = getattr(conn, "_initial_watch", None)
        if w is not None:
            conn._initial_watch = None  # type: ignore[attr-defined]
            conn.watch_event(w.event_path(w.path), w.token)

    def remove_watch(self, conn: Connection, raw_path: bytes, token: bytes) -> bytes:
        path = conn._path(raw_path, special=True)
        w = self.watches.find(conn, path, token)
        if w is None:
            raise XenstoreError("ENOENT")
        self.watches.remove(w)
        conn.watches.remove(w)
        return OK

    def reset_watches(self, conn: Connection) -> None:
        """RESET_WATCHES drops the connection's watches and transactions (as Xen)."""
        for w in conn.watches:
            self.watches.remove(w)
        conn.watches.clear()
        conn.transactions.clear()

    # -- transactions -----------------------------------------------------------------
    def start_transaction(self, conn: Connection) -> bytes:
        if not conn.caller.privileged and len(conn.transactions) >= self.quotas.transactions:
            raise XenstoreError(EQUOTA, "transaction quota")
        tx_id = self.next_tx
        self.next_tx = self.next_tx % 0xFFFFFFFF + 1
        conn.transactions[tx_id] = Transaction(self.store, tx_id)
        return b"%d\0" % tx_id

    def end_transaction(self, conn: Connection, tx: Transaction, commit: bool) -> bytes:
        conn.transactions.pop(tx.tx_id, None)
        if not commit:
            return OK
        if tx.conflicts():
            self.stats["conflicts"] += 1
            raise XenstoreError("EAGAIN")
        c = conn.caller
        if not c.privileged:
            if tx.count(c.domid) > max(self.quotas.nodes, self.store.count(c.domid)):
                raise XenstoreError(EQUOTA, "node quota at commit")
        tx.apply()
        self.stats["commits"] += 1
        self.fire(tx.events)
        return OK

    # -- domains ----------------------------------------------------------------------
    def is_introduced(self, domid: int) -> bool:
        return domid == 0 or domid in self.domains

    def caller_for(self, domid: int) -> Caller:
        if domid == 0:
            return Caller(0, True)
        dom = self.domains.get(domid)
        return Caller(domid, False, dom.target if dom else None)

    def introduce(self, domid: int, *, gfn: int = 0, port: int = 0, ring: Any = None) -> None:
        """Register a domain (and bind its ring if we have one); fires @introduceDomain."""
        if domid == 0:
            return
        dom = self.domains.get(domid)
        new = dom is None
        if dom is None:
            dom = self.domains[domid] = Domain(domid)
        dom.gfn, dom.port = gfn, port
        if ring is None and self.ring_mapper is not None and gfn:
            ring = self.ring_mapper(domid, gfn, port)
        if ring is not None:
            if dom.ring is not None and dom.ring is not ring:
                dom.ring.detach()
            dom.ring = ring
            ring.attach(self, self.caller_for(domid))
        self.persist_domains()
        if new:
            self.fire([Event("@introduceDomain", self.special_perms["@introduceDomain"])])

    def release(self, domid: int) -> None:
        """Forget a domain, as Xen 4.17's XS_RELEASE (destroy_domain()): drop its
        connections (its watches first, so it hears nothing of what follows), clean the
        tree of it (_forget_domain), then fire @releaseDomain."""
        if domid == 0:
            raise XenstoreError("EINVAL", "dom0 cannot be released")
        dom = self.domains.pop(domid, None)
        if dom is None:
            raise XenstoreError("ENOENT")
        if dom.ring is not None:
            dom.ring.detach()
        for conn in [c for c in self.connections if c.caller.domid == domid]:
            self.drop(conn)
        for other in self.domains.values():
            if other.target == domid:
                other.target = None
                self._recaller(other.domid)
        events = self._forget_domain(domid)
        self.journal()
        self.persist_domains()
        self.fire(events)
        self.fire([Event("@releaseDomain", self.special_perms["@releaseDomain"])])

    def fire_release_domain_watch(self) -> None:
        """Fire @releaseDomain without releasing anything: C xenstored does this when
        VIRQ_DOM_EXC says some domain has shut down (domain_cleanup() fires it for a
        domain newly seen shut down or dying), so watchers re-check domain states."""
        self.fire([Event("@releaseDomain", self.special_perms["@releaseDomain"])])

    def _forget_domain(self, domid: int) -> list[Event]:
        """What Xen 4.17 does to the tree when a domain goes away, so that a later
        domain given the same domid inherits nothing of it:

        - nodes the domain owns are removed with their subtrees, firing watches
          (domain_tree_remove(), XSA-419), or with keep_orphans handed to dom0
          (XSA-322); either way they stop counting against the domain's quota;
        - other ACL entries naming it are marked IGNORE and grant nothing any more
          (domain_adjust_node_perms(), XSA-322). GET_PERMS still lists them;
        - the special nodes' ACLs lose their entries for it, and dom0 takes over any
          it owned (remove_domid_from_perm()).

        Xen ignores entries lazily (a node's generation against the domain's); marking
        them here, without a new node generation, has the same effect and causes no
        spurious transaction conflicts. Returns the watch events of the removals."""
        store = self.store
        events: list[Event] = []
        stack = ["/"]
        while stack and store.count(domid) > 0:
            path = stack.pop()
            node = store.get(path)
            if node is None:
                continue
            if node.perms[0][0] == domid:
                if self.keep_orphans or path == "/":
                    node = store.get_for_update(path)
                    node.perms = ((0, node.perms[0][1]),) + node.perms[1:]
                    store.put(path, node)
                else:
                    events += S.rm(store, DOM0, path)
                    continue
            stack.extend(P.join(path, c) for c in node.children)
        for path, node in store.nodes.items():
            perms = ignore_domain(node.perms, domid)
            if perms is not node.perms:
                node.perms = perms  # in place: the entry is dead, nothing else changed
                store.dirty[path] = None
        for conn in self.connections:
            for tx in conn.transactions.values():
                for n in tx.overlay.values():
                    if n is None:
                        continue
                    if n.perms[0][0] == domid:
                        tx.doomed = True  # would commit a node owned by a dead domain
                    n.perms = ignore_domain(n.perms, domid)
                for n in tx.snap.values():  # its private copies of what it read
                    if n is not None:
                        n.perms = ignore_domain(n.perms, domid)
        for name, perms in self.special_perms.items():
            owner = perms[0] if perms[0][0] != domid else (0, perms[0][1])
            self.special_perms[name] = (owner,) + tuple(e for e in perms[1:] if e[0] != domid)
        if store.count(domid) == 0:
            store.counts.pop(domid, None)
            store.mem.pop(domid, None)
        return events

    def resume(self, domid: int) -> None:
        if not self.is_introduced(domid):
            raise XenstoreError("ENOENT")

    def set_target(self, domid: int, target: int) -> None:
        """SET_TARGET: `domid` (a stub domain) gets `target`'s rights on its nodes."""
        if domid == 0 or domid not in self.domains:
            raise XenstoreError("ENOENT")
        if not self.is_introduced(target):
            raise XenstoreError("ENOENT")
        self.domains[domid].target = target
        self._recaller(domid)
        self.persist_domains()

    def _recaller(self, domid: int) -> None:
        caller = self.caller_for(domid)
        for conn in self.connections:
            if conn.caller.domid == domid:
                conn.caller = caller

    # -- connections ------------------------------------------------------------------
    def register(self, conn: Connection) -> None:
        self.connections.add(conn)

    def drop(self, conn: Connection) -> None:
        """Forget a connection: its watches and open transactions go with it."""
        if conn.closed:
            return
        conn.closed = True
        self.reset_watches(conn)
        self.connections.discard(conn)
        conn.out.clear()
        self.close_transport(conn)

    # -- CONTROL ----------------------------------------------------------------------
    def control(self, conn: Connection, args: list[str]) -> bytes:
        cmd, rest = args[0], args[1:]
        if cmd == "print":
            log.info("xenstored control print: %s", " ".join(rest))
            return OK
        if cmd == "log":
            if rest and rest[0] in ("on", "off"):
                self.trace = rest[0] == "on"
                logging.getLogger("pyxen.xenstore.trace").setLevel(
                    logging.DEBUG if self.trace else logging.WARNING)
                return OK
            return b"log is %s\0" % (b"on" if self.trace else b"off")
        if cmd == "quota":
            return self._control_quota(rest)
        if cmd == "check":
            self._check()
            return OK
        if cmd == "domain-exc" and len(rest) == 1 and rest[0].isdigit():
            # the toolstack saw domain N shut down (VIRQ_DOM_EXC for C xenstored)
            if self.is_introduced(int(rest[0])):
                self.fire_release_domain_watch()
            return OK
        if cmd == "help":
            return (b"Supported commands:\nhelp\nprint <string>\nlog [on|off]\n"
                    b"quota [<domid>|<name> <value>]\ncheck\n"
                    b"domain-exc <domid>\n\0")
        raise XenstoreError("EINVAL", f"unknown control command {cmd!r}")

    def _control_quota(self, rest: list[str]) -> bytes:
        q = self.quotas
        if not rest or rest == [""]:
            return q.describe().encode() + b"\0"
        if len(rest) == 1 and rest[0].isdigit():
            domid = int(rest[0])
            conns = [c for c in self.connections if c.caller.domid == domid]
            usage = {
                "nodes": self.store.count(domid),
                "memory": self.store.memory(domid),
                "watches": sum(len(c.watches) for c in conns),
                "transactions": sum(len(c.transactions) for c in conns),
                "outstanding": sum(c.pending_replies for c in conns),
            }
            return "".join(f"{k:<20} {v}\n" for k, v in usage.items()).encode() + b"\0"
        if len(rest) == 2 and rest[1].isdigit():
            try:
                q.set(rest[0], int(rest[1]))
            except ValueError as e:
                raise XenstoreError("EINVAL", str(e)) from None
            for c in self.connections:
                c._paths.clear()  # validated under the old path-length quota
                c._read_paths.clear()
            return OK
        raise XenstoreError("EINVAL", "quota [<domid>|<name> <value>]")

    def _check(self) -> None:
        nodes = self.store.nodes
        for p, n in nodes.items():
            if p != "/" and P.basename(p) not in nodes[P.parent(p)].children:
                raise XenstoreError("EIO", f"{p} missing from its parent")
            for c in n.children:
                if P.join(p, c) not in nodes:
                    raise XenstoreError("EIO", f"child {c} of {p} missing")
        owned: dict[int, int] = {}
        for n in nodes.values():
            owned[n.perms[0][0]] = owned.get(n.perms[0][0], 0) + 1
        if owned != {d: c for d, c in self.store.counts.items() if c}:
            raise XenstoreError("EIO", "per-domain node accounting is off")
