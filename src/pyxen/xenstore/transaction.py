"""Transactions: a private overlay of the committed tree, validated at commit.

A transaction sees the tree as it was when it started: reading anything committed
after the start marks the transaction doomed, and every node it read or wrote is
remembered with its generation. TRANSACTION_END T applies the overlay only if none of
those nodes changed meanwhile; otherwise the loser gets EAGAIN and retries, as with
Xen's xenstored. Watch events are held back and fired on commit.
"""

from __future__ import annotations

from . import path as P
from .store import Event, Node, Store, node_cost


class Transaction:
    def __init__(self, store: Store, tx_id: int) -> None:
        self.store = store
        self.tx_id = tx_id
        self.start_gen = store.generation
        self.overlay: dict[str, Node | None] = {}
        self.seen: dict[str, int | None] = {}  # path -> generation observed (None: absent)
        self.events: list[Event] = []
        self.doomed = False
        self._counts: dict[int, int] = {}
        self._mem: dict[int, int] = {}

    def touched(self) -> int:
        return len(self.seen)

    def _observe(self, path: str) -> Node | None:
        node = self.store.get(path)
        if path not in self.seen:
            if node is not None:
                self.seen[path] = node.gen
                if node.gen > self.start_gen:
                    self.doomed = True  # changed since our snapshot
            else:
                self.seen[path] = None
                # Deleted after we started? Its nearest surviving ancestor changed then.
                for anc in P.ancestors_and_self(P.parent(path)) if path != "/" else ():
                    a = self.store.get(anc)
                    if a is not None:
                        if a.gen > self.start_gen:
                            self.doomed = True
                        break
        return node

    # -- View -------------------------------------------------------------------------
    def get(self, path: str) -> Node | None:
        if path in self.overlay:
            return self.overlay[path]
        return self._observe(path)

    def get_for_update(self, path: str) -> Node:
        if path in self.overlay:
            node = self.overlay[path]
            assert node is not None
            return node
        node = self._observe(path)
        assert node is not None
        copy = node.copy()
        self.overlay[path] = copy
        return copy

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
