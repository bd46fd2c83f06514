"""The tree: nodes, per-owner accounting, and xenstored's operations on any view of it.

The committed tree is a flat dict of absolute path -> Node. Operations are written once
against a *view* (the committed Store, or a Transaction's overlay of it), check Xen's
permissions and quotas for the calling domain, and return the watch events they cause
so the caller can fire them now (no transaction) or at commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from . import path as P
from .perms import DOM0_DEFAULT, OWNER, READ, WRITE, Caller, Perms
from .quota import Quotas
from .wire import EQUOTA, XenstoreError

WRITE_OWNER = WRITE | OWNER
NODE_OVERHEAD = 64  # bytes charged per node in the memory quota, besides path/value/perms


class Node:
    """One xenstore node. ``gen`` changes on every modification (DIRECTORY_PART, tx checks)."""

    __slots__ = ("value", "perms", "children", "gen", "acct")

    def __init__(self, value: bytes, perms: Perms, children: dict[str, None] | None = None,
                 gen: int = 0) -> None:
        self.value = value
        self.perms = perms
        self.children: dict[str, None] = children if children is not None else {}
        self.gen = gen
        self.acct: tuple[int, int] = (perms[0][0], 0)  # (owner, cost) last charged

    def copy(self) -> Node:
        n = Node(self.value, self.perms, dict(self.children), self.gen)
        n.acct = self.acct
        return n

    def entry_size(self) -> int:
        """What quota node-size bounds: value, ACL and child names (as Xen's record)."""
        return len(self.value) + 8 * len(self.perms) + sum(len(c) + 1 for c in self.children)


def node_cost(path: str, node: Node) -> int:
    return NODE_OVERHEAD + len(path) + len(node.value) + 8 * len(node.perms)


@dataclass(slots=True)
class Event:
    """A change to report to watchers: the path, the ACL that decides who may see it,
    and for RM the removed descendants (watches below fire with their own path)."""

    path: str
    perms: Perms
    removed: dict[str, Perms] | None = None


class View(Protocol):
    def get(self, path: str) -> Node | None: ...
    def get_for_update(self, path: str) -> Node: ...
    def put(self, path: str, node: Node) -> None: ...
    def delete(self, path: str) -> None: ...
    def count(self, domid: int) -> int: ...
    def memory(self, domid: int) -> int: ...


class Store:
    """The committed tree, with per-owner node counts and memory for the quotas."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.generation = 0
        self.counts: dict[int, int] = {}
        self.mem: dict[int, int] = {}
        self.dirty: dict[str, None] = {}  # paths changed since the journal last looked
        self.put("/", Node(b"", DOM0_DEFAULT))
        for p in ("/local", "/local/domain", "/tool"):
            self._add_child_raw(p)

    def _add_child_raw(self, path: str) -> None:
        par = self.nodes[P.parent(path)]
        par.children[P.basename(path)] = None
        self.put(path, Node(b"", DOM0_DEFAULT))

    # -- View -------------------------------------------------------------------------
    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def get_for_update(self, path: str) -> Node:
        return self.nodes[path]

    def put(self, path: str, node: Node) -> None:
        old = self.nodes.get(path)
        if old is not None:
            self._charge(old.acct, -1)
        self.generation += 1
        node.gen = self.generation
        node.acct = (node.perms[0][0], node_cost(path, node))
        self._charge(node.acct, 1)
        self.nodes[path] = node
        self.dirty[path] = None

    def set_value(self, path: str, node: Node, value: bytes) -> None:
        """put() of the committed `node` at `path` with only its value changed: the
        same generation, accounting and journal marks, without a copy (a WRITE)."""
        old_owner, old_cost = node.acct
        owner = node.perms[0][0]
        cost = NODE_OVERHEAD + len(path) + len(value) + 8 * len(node.perms)
        node.value = value
        self.generation += 1
        node.gen = self.generation
        mem = self.mem
        if owner == old_owner:
            mem[owner] = mem.get(owner, 0) + cost - old_cost
        else:
            self._charge(node.acct, -1)
            self._charge((owner, cost), 1)
        node.acct = (owner, cost)
        self.dirty[path] = None

    def delete(self, path: str) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self._charge(old.acct, -1)
            self.generation += 1
            self.dirty[path] = None

    def count(self, domid: int) -> int:
        return self.counts.get(domid, 0)

    def memory(self, domid: int) -> int:
        return self.mem.get(domid, 0)

    def _charge(self, acct: tuple[int, int], sign: int) -> None:
        owner, cost = acct
        self.counts[owner] = self.counts.get(owner, 0) + sign
        self.mem[owner] = self.mem.get(owner, 0) + sign * cost

    def load(self, entries: list[tuple[str, bytes, Perms]]) -> None:
        """Rebuild from persisted (path, value, perms), parents first; orphans are skipped."""
        for path, value, perms in sorted(entries, key=lambda e: e[0].count("/")):
            if path == "/":
                node = self.nodes["/"]
                node.value, node.perms = value, perms
                self.put("/", node)
                continue
            par = self.nodes.get(P.parent(path))
            if par is None:
                continue
            par.children[P.basename(path)] = None
            old = self.nodes.get(path)
            node = Node(value, perms, old.children if old else None)
            self.put(path, node)
        self.dirty.clear()

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Parents before children (persistence relies on it)."""
        stack = ["/"]
        while stack:
            p = stack.pop()
            node = self.nodes[p]
            yield p, node
            stack.extend(P.join(p, c) for c in reversed(node.children))


# -- permission helpers ----------------------------------------------------------------

def _nearest_existing(view: View, path: str) -> Node:
    for anc in P.ancestors_and_self(P.parent(path)):
        node = view.get(anc)
        if node is not None:
            return node
    raise AssertionError("root missing")  # the root is never removed


def errno_from_parents(view: View, caller: Caller, path: str, need: int) -> str:
    """ENOENT only if the caller could know: else EACCES (Xen hides existence)."""
    par = _nearest_existing(view, path)
    return "ENOENT" if caller.perm_for(par.perms) & need else "EACCES"


def lookup(view: View, caller: Caller, path: str, need: int) -> Node:
    node = view.get(path)
    if node is None:
        raise XenstoreError(errno_from_parents(view, caller, path, need))
    if caller.perm_for(node.perms) & need != need:
        raise XenstoreError("EACCES")
    return node


# -- operations ------------------------------------------------------------------------

def read(view: View, caller: Caller, path: str) -> bytes:
    return lookup(view, caller, path, READ).value


def directory(view: View, caller: Caller, path: str) -> list[str]:
    return list(lookup(view, caller, path, READ).children)


def get_perms(view: View, caller: Caller, path: str) -> Perms:
    return lookup(view, caller, path, READ).perms


def _check_size(caller: Caller, node: Node, q: Quotas) -> None:
    if not caller.privileged and node.entry_size() > q.node_size:
        raise XenstoreError(EQUOTA, "node size quota")


def _check_memory(view: View, caller: Caller, extra: int, q: Quotas) -> None:
    if not caller.privileged and view.memory(caller.domid) + extra > q.memory:
        raise XenstoreError(EQUOTA, "memory quota")


def _create(view: View, caller: Caller, path: str, value: bytes, q: Quotas) -> None:
    """Create path and any missing parents, each inheriting its parent's ACL;
    an unprivileged creator becomes the owner of what it creates (as in Xen)."""
    missing = [path]
    top = P.parent(path)
    while view.get(top) is None:
        missing.append(top)
        top = P.parent(top)
    missing.reverse()
    base = view.get(top)
    assert base is not None
    perms = base.perms
    if not caller.privileged:
        perms = ((caller.domid, perms[0][1]),) + perms[1:]
        if view.count(caller.domid) + len(missing) > q.nodes:
            raise XenstoreError(EQUOTA, "node quota")
        _check_memory(view, caller, sum(NODE_OVERHEAD + len(m) + 8 * len(perms)
                                        for m in missing) + len(value), q)
    new_leaf = Node(value, perms)
    _check_size(caller, new_leaf, q)
    name = P.basename(missing[0])
    if not caller.privileged and base.entry_size() + len(name) + 1 > q.node_size:
        raise XenstoreError(EQUOTA, "node size quota (parent's child list)")
    par = view.get_for_update(top)
    par.children[name] = None
    view.put(top, par)
    for i, p in enumerate(missing):
        node = new_leaf if p == path else Node(b"", perms)
        if i + 1 < len(missing):
            node.children[P.basename(missing[i + 1])] = None
        view.put(p, node)


def write(view: View, caller: Caller, path: str, value: bytes, q: Quotas) -> list[Event]:
    node = view.get(path)
    if node is None:
        err = errno_from_parents(view, caller, path, WRITE)
        if err != "ENOENT":
            raise XenstoreError(err)
        _create(view, caller, path, value, q)
        return [Event(path, view.get(path).perms)]  # type: ignore[union-attr]
    if caller.perm_for(node.perms) & WRITE != WRITE:
        raise XenstoreError("EACCES")
    if not caller.privileged:
        _check_memory(view, caller, len(value) - len(node.value), q)
    node = view.get_for_update(path)
    old_value = node.value
    node.value = value
    if not caller.privileged and node.entry_size() > q.node_size:
        node.value = old_value
        raise XenstoreError(EQUOTA, "node size quota")
    view.put(path, node)
    return [Event(path, node.perms)]


def mkdir(view: View, caller: Caller, path: str, q: Quotas) -> list[Event]:
    node = view.get(path)
    if node is not None:
        if caller.perm_for(node.perms) & WRITE != WRITE:
            raise XenstoreError("EACCES")
        return []
    err = errno_from_parents(view, caller, path, WRITE)
    if err != "ENOENT":
        raise XenstoreError(err)
    _create(view, caller, path, b"", q)
    return [Event(path, view.get(path).perms)]  # type: ignore[union-attr]


def rm(view: View, caller: Caller, path: str) -> list[Event]:
    node = view.get(path)
    if node is None:
        err = errno_from_parents(view, caller, path, WRITE)
        if err == "ENOENT" and view.get(P.parent(path)) is not None:
            return []  # removing what is already gone is fine if the parent exists
        raise XenstoreError(err)
    if caller.perm_for(node.perms) & WRITE != WRITE:
        raise XenstoreError("EACCES")
    if path == "/":
        raise XenstoreError("EINVAL", "cannot remove the root")
    removed: dict[str, Perms] = {}
    stack = [path]
    while stack:
        p = stack.pop()
        n = view.get(p)
        if n is None:
            continue
        removed[p] = n.perms
        stack.extend(P.join(p, c) for c in n.children)
    for p in reversed(list(removed)):
        view.delete(p)
    par_path = P.parent(path)
    par = view.get_for_update(par_path)
    par.children.pop(P.basename(path), None)
    view.put(par_path, par)
    return [Event(path, node.perms, removed)]


def set_perms(view: View, caller: Caller, path: str, perms: Perms, q: Quotas) -> list[Event]:
    node = lookup(view, caller, path, WRITE_OWNER)
    if not caller.privileged:
        if perms[0][0] != node.perms[0][0]:
            raise XenstoreError("EPERM", "only dom0 may change a node's owner")
        if len(perms) - 1 > q.permissions:
            raise XenstoreError(EQUOTA, "permissions quota")
    old = node.perms
    node = view.get_for_update(path)
    node.perms = perms
    if not caller.privileged and node.entry_size() > q.node_size:
        node.perms = old
        raise XenstoreError(EQUOTA, "node size quota")
    view.put(path, node)
    return [Event(path, perms)]
