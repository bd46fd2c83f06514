"""Transactions, as Xen's C xenstored runs them (xenstored_transaction.c).

A transaction works on each node as it was when the transaction first accessed it:
the first access (read, write, directory listing, existence check, a parent looked at
while creating or removing a child) records the node's generation (or its absence)
and keeps a private copy, so a node read again inside the transaction keeps its value
even if another connection changes it meanwhile. Writes go to a private overlay that
only this transaction sees until commit. TRANSACTION_END T applies the overlay only if
every accessed node still has the generation (or absence) recorded at its first
access; otherwise the commit fails with EAGAIN and the client retries. Nodes the
transaction never touched may change freely. Watch events are held back and fired on
commit. (A node changed after TRANSACTION_START but before the transaction first
accesses it is no conflict: Xen compares per-node generations from the first access,
not the transaction's start.)
"""

from __future__ import annotations

from .store import Event, Node, Store, node_cost


class Transaction:
    __slots__ = ("store", "tx_id", "overlay", "snap", "seen", "events", "doomed",
                 "_counts", "_mem")

    def __init__(self, store: Store, tx_id: int) -> None:
        self.store = store
        self.tx_id = tx_id
        self.overlay: dict[str, Node | None] = {}  # written/removed here (None: removed)
        self.snap: dict[str, Node | None] = {}  # private copies as first accessed
        self.seen: dict[str, int | None] = {}  # path -> generation then (None: absent)
        self.events: list[Event] = []
        self.doomed = False
        self._counts: dict[int, int] = {}
        self._mem: dict[int, int] = {}

    def touched(self) -> int:
        return len(self.seen)

    def _first_access(self, path: str) -> Node | None:
        node = self.store.nodes.get(path)
        if node is None:
            self.seen[path] = None
            self.snap[path] = None
            return None
        self.seen[path] = node.gen
        copy = self.snap[path] = node.copy()  # committed nodes change in place
        return copy

    # -- View -------------------------------------------------------------------------
    def get(self, path: str) -> Node | None:
        overlay = self.overlay
        if path in overlay:
            return overlay[path]
        snap = self.snap
        if path in snap:
            return snap[path]
        return self._first_access(path)

    def get_for_update(self, path: str) -> Node:
        if path in self.overlay:
            node = self.overlay[path]
            assert node is not None
            return node
        # What get() returns here is already this transaction's own copy (taken at
        # first access, in snap); once in the overlay, get() never looks at snap again.
        node = self.get(path)
        assert node is not None
        self.overlay[path] = node
        return node

    def put(self, path: str, node: Node) -> None:
        prev = self.get(path)
        if prev is not None:
            self._charge(prev.acct, -1)
        node.acct = (node.perms[0][0], node_cost(path, node))
        self._charge(node.acct, 1)
        self.overlay[path] = node

    def delete(self, path: str) -> None:
        prev = self.get(path)
        if prev is not None:
            self._charge(prev.acct, -1)
        self.overlay[path] = None

    def count(self, domid: int) -> int:
        return self.store.count(domid) + self._counts.get(domid, 0)

    def memory(self, domid: int) -> int:
        return self.store.memory(domid) + self._mem.get(domid, 0)

    def _charge(self, acct: tuple[int, int], sign: int) -> None:
        owner, cost = acct
        self._counts[owner] = self._counts.get(owner, 0) + sign
        self._mem[owner] = self._mem.get(owner, 0) + sign * cost

    # -- commit -----------------------------------------------------------------------
    def conflicts(self) -> bool:
        """True if any node this transaction accessed changed since its first access
        (written, removed, created, or a child added/removed: the parent changes)."""
        if self.doomed:
            return True
        nodes = self.store.nodes
        for path, gen in self.seen.items():
            cur = nodes.get(path)
            if (cur.gen if cur is not None else None) != gen:
                return True
        return False

    def apply(self) -> list[tuple[str, Node | None]]:
        """Install the overlay into the committed tree; returns what changed."""
        changes = list(self.overlay.items())
        for path, node in changes:
            if node is None:
                self.store.delete(path)
            else:
                self.store.put(path, node)
        return changes
