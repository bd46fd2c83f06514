"""Transactions as Xen's C xenstored runs them, two connections interleaved.

A transaction works on each node as it was when it first accessed it (a re-read keeps
that value even after another connection changed the node), its own writes are seen
only by itself until commit, and the commit fails with EAGAIN exactly when a node it
accessed (read, written, listed, checked for existence, or looked at as the parent of
a node it created or removed) changed since that first access
(xenstored_transaction.c). The hypothesis test checks every interleaving of the two
connections against a model of exactly that rule.
"""

from __future__ import annotations

import itertools
import queue
import subprocess

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pyxs import Client as PyxsClient

from pyxen.xenstore import XenstoreError

_counter = itertools.count()
KEYS = ("k0", "k1", "k2")  # exist throughout, under the root; never removed
CHILDREN = ("c0", "c1", "c2")  # come and go under ROOT/d
PERMS = (["n0"], ["n0", "r1"], ["b0", "w2"])
value = st.sampled_from([b"v0", b"v1", b"v2", b""])

tx_op = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("write"), st.sampled_from(KEYS), value),
    st.tuples(st.just("set_perms"), st.sampled_from(KEYS), st.sampled_from(range(3))),
    st.tuples(st.just("dir"), st.none(), st.none()),
    st.tuples(st.just("exists"), st.sampled_from(CHILDREN), st.none()),
    st.tuples(st.just("mkdir"), st.sampled_from(CHILDREN), st.none()),
    st.tuples(st.just("rm"), st.sampled_from(CHILDREN), st.none()),
)
other_op = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("write"), st.sampled_from(KEYS), value),
    st.tuples(st.just("set_perms"), st.sampled_from(KEYS), st.sampled_from(range(3))),
    st.tuples(st.just("dir"), st.none(), st.none()),
    st.tuples(st.just("mkdir"), st.sampled_from(CHILDREN), st.none()),
    st.tuples(st.just("write_child"), st.sampled_from(CHILDREN), value),
    st.tuples(st.just("rm"), st.sampled_from(CHILDREN), st.none()),
)
step = st.one_of(st.tuples(st.just("tx"), tx_op), st.tuples(st.just("other"), other_op))


class Model:
    """Committed state with a generation per node (None: absent), and one
    transaction's first-access records, private copies and overlay."""

    def __init__(self) -> None:
        self.gen = itertools.count(1)
        # node -> (generation, payload): keys carry (value, perms), "d" its children,
        # children their value
        self.tree: dict[str, tuple[int, object]] = {}
        for k in KEYS:
            self.tree[k] = (next(self.gen), (b"", 0))
        self.tree["d"] = (next(self.gen), frozenset())
        self.seen: dict[str, int | None] = {}
        self.view: dict[str, object] = {}  # the transaction's copy or overlay (None: absent)
        self.written: set[str] = set()

    # -- committed side (the other connection) -----------------------------------------
    def change(self, node: str, payload: object) -> None:
        self.tree[node] = (next(self.gen), payload)

    def remove(self, node: str) -> None:
        self.tree.pop(node, None)

    def committed(self, node: str) -> object:
        return self.tree[node][1] if node in self.tree else None

    # -- the transaction ----------------------------------------------------------------
    def get(self, node: str) -> object:
        if node not in self.view:
            self.seen[node] = self.tree[node][0] if node in self.tree else None
            self.view[node] = self.committed(node)
        return self.view[node]

    def put(self, node: str, payload: object) -> None:
        self.get(node)
        self.view[node] = payload
        self.written.add(node)

    def conflicts(self) -> bool:
        return any((self.tree[n][0] if n in self.tree else None) != g
                   for n, g in self.seen.items())

    def commit(self) -> None:
        for node in self.written:
            if self.view[node] is None:
                self.remove(node)
            else:
                self.change(node, self.view[node])


def _run_tx_op(c, tx: int, root: str, m: Model, kind: str, name, arg) -> None:
    d = f"{root}/d"
    if kind == "read":
        assert c.read(f"{root}/{name}", tx) == m.get(name)[0]
    elif kind == "write":
        c.write(f"{root}/{name}", arg, tx)
        m.put(name, (arg, m.get(name)[1]))
    elif kind == "set_perms":
        c.set_perms(f"{root}/{name}", PERMS[arg], tx)
        m.put(name, (m.get(name)[0], arg))
    elif kind == "dir":
        assert sorted(c.directory(d, tx)) == sorted(m.get("d"))
    elif kind == "exists":
        present = c.exists(f"{d}/{name}", tx)
        if m.get(f"d/{name}") is None:
            m.get("d")  # ENOENT or EACCES? the parent is looked at (errno_from_parents)
        assert present == (m.get(f"d/{name}") is not None)
    elif kind == "mkdir":
        c.mkdir(f"{d}/{name}", tx)
        if m.get(f"d/{name}") is None:
            m.put(f"d/{name}", b"")
            m.put("d", m.get("d") | {name})
    elif kind == "rm":
        c.rm(f"{d}/{name}", tx)
        if m.get(f"d/{name}") is not None:
            m.put(f"d/{name}", None)
            m.put("d", m.get("d") - {name})
        else:
            m.get("d")  # the parent is looked at (errno_from_parents, "parent exists?")


def _run_other_op(c, root: str, m: Model, kind: str, name, arg) -> None:
    d = f"{root}/d"
    if kind == "read":
        assert c.read(f"{root}/{name}") == m.committed(name)[0]
    elif kind == "write":
        c.write(f"{root}/{name}", arg)
        m.change(name, (arg, m.committed(name)[1]))
    elif kind == "set_perms":
        c.set_perms(f"{root}/{name}", PERMS[arg])
        m.change(name, (m.committed(name)[0], arg))
    elif kind == "dir":
        assert sorted(c.directory(d)) == sorted(m.committed("d"))
    elif kind in ("mkdir", "write_child"):
        if kind == "mkdir":
            c.mkdir(f"{d}/{name}")
        else:
            c.write(f"{d}/{name}", arg)
        if m.committed(f"d/{name}") is None:
            m.change(f"d/{name}", b"")
            m.change("d", m.committed("d") | {name})
        if kind == "write_child":
            m.change(f"d/{name}", arg)
    elif kind == "rm":
        c.rm(f"{d}/{name}")
        if m.committed(f"d/{name}") is not None:
            m.remove(f"d/{name}")
            m.change("d", m.committed("d") - {name})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, max_size=14), commit=st.booleans())
def test_interleavings_match_xen(dom0, host, steps, commit):
    other = host.client() if not host.clients[1:] else host.clients[1]
    root = f"/txsem{next(_counter)}"
    for k in KEYS:
        dom0.write(f"{root}/{k}", "")
    dom0.mkdir(f"{root}/d")
    m = Model()
    tx = dom0.transaction_start()
    for who, (kind, name, arg) in steps:
        if who == "tx":
            _run_tx_op(dom0, tx, root, m, kind, name, arg)
        else:
            _run_other_op(other, root, m, kind, name, arg)
    expect_ok = not m.conflicts()
    event(f"commit={commit} conflict={not expect_ok}")
    if commit:
        assert dom0.transaction_end(tx) is expect_ok
        if expect_ok:
            m.commit()
    else:
        assert dom0.transaction_end(tx, commit=False) is True
    for k in KEYS:  # what everyone sees now
        assert other.read(f"{root}/{k}") == m.committed(k)[0]
        assert other.get_perms(f"{root}/{k}") == PERMS[m.committed(k)[1]]
    assert sorted(other.directory(f"{root}/d")) == sorted(m.committed("d"))
    for c in CHILDREN:
        want = m.committed(f"d/{c}")
        assert other.exists(f"{root}/d/{c}") == (want is not None)
        if want is not None:
            assert other.read(f"{root}/d/{c}") == want


# -- the rules one by one, with different clients ----------------------------------------

def test_reread_keeps_the_first_value_then_eagain(dom0, host):
    dom0.write("/r/a", "old")
    tx = dom0.transaction_start()
    assert dom0.read("/r/a", tx) == b"old"
    host.tool("xenstore-write", "/r/a", "new")  # Debian's tool, another connection
    assert dom0.read("/r/a", tx) == b"old"
    assert dom0.transaction_end(tx) is False  # EAGAIN
    assert dom0.read("/r/a") == b"new"


def test_change_before_first_access_is_no_conflict(dom0, host):
    dom0.write("/r/b", "old")
    tx = dom0.transaction_start()
    host.client().write("/r/b", "new")  # before the transaction looks at it
    assert dom0.read("/r/b", tx) == b"new"
    dom0.write("/r/b2", "x", tx)
    assert dom0.transaction_end(tx) is True


def test_own_writes_invisible_until_commit(dom0, host):
    dom0.write("/r/c", "0")
    tx = dom0.transaction_start()
    dom0.write("/r/c", "1", tx)
    dom0.write("/r/c/new", "n", tx)
    assert dom0.read("/r/c", tx) == b"1"
    assert host.tool("xenstore-read", "/r/c").stdout.strip() == "0"
    assert host.tool("xenstore-exists", "/r/c/new", check=False).returncode != 0
    with PyxsClient(unix_socket_path=host.socket) as p:
        assert p.read(b"/r/c") == b"0"
    assert dom0.read("/r/c") == b"0"  # the same connection outside the transaction
    assert dom0.transaction_end(tx)
    assert host.tool("xenstore-read", "/r/c/new").stdout.strip() == "n"


@pytest.mark.parametrize("change", ["write", "rm", "mkdir_child", "set_perms", "rm_child"])
@pytest.mark.parametrize("access", ["read", "write", "directory", "exists", "get_perms",
                                    "set_perms", "mkdir_child", "rm_child"])
def test_eagain_when_an_accessed_node_changes(dom0, host, access, change):
    root = f"/e/{access}-{change}"
    dom0.write(f"{root}/n/kid", "v")
    tx = dom0.transaction_start()
    node = f"{root}/n"
    if access == "read":
        dom0.read(node, tx)
    elif access == "write":
        dom0.write(node, "mine", tx)
    elif access == "directory":
        dom0.directory(node, tx)
    elif access == "exists":
        assert dom0.exists(node, tx)
    elif access == "get_perms":
        dom0.get_perms(node, tx)
    elif access == "set_perms":
        dom0.set_perms(node, ["n0", "r2"], tx)
    elif access == "mkdir_child":
        dom0.mkdir(f"{node}/mine", tx)  # the parent's child list is accessed
    else:
        dom0.rm(f"{node}/kid", tx)
    o = host.client()
    if change == "write":
        o.write(node, "theirs")
    elif change == "rm":
        o.rm(node)
    elif change == "mkdir_child":
        o.mkdir(f"{node}/other")  # a child created under a node the transaction used
    elif change == "rm_child":
        o.rm(f"{node}/kid")
    else:
        o.set_perms(node, ["n0", "r3"])
    dom0.write(f"{root}/elsewhere", "x", tx)
    assert dom0.transaction_end(tx) is False


@pytest.mark.parametrize("change", ["write", "rm", "mkdir", "set_perms"])
def test_untouched_nodes_may_change(dom0, host, change):
    dom0.write("/u/mine", "1")
    dom0.write("/u/theirs/x", "1")
    tx = dom0.transaction_start()
    assert dom0.read("/u/mine", tx) == b"1"
    dom0.write("/u/mine", "2", tx)
    o = host.client()
    if change == "write":
        o.write("/u/theirs/x", "2")
    elif change == "rm":
        o.rm("/u/theirs/x")
    elif change == "mkdir":
        o.mkdir("/u/theirs/y")
    else:
        o.set_perms("/u/theirs", ["n0", "r4"])
    assert dom0.transaction_end(tx) is True
    assert o.read("/u/mine") == b"2"


def test_absent_node_stays_absent_and_conflicts_if_created(dom0, host):
    dom0.mkdir("/a")
    tx = dom0.transaction_start()
    assert not dom0.exists("/a/ghost", tx)
    host.tool("xenstore-write", "/a/ghost", "boo")
    assert not dom0.exists("/a/ghost", tx)  # still absent for the transaction
    assert dom0.transaction_end(tx) is False


def test_child_created_under_a_listed_node(dom0, host):
    dom0.write("/l/x", "")
    tx = dom0.transaction_start()
    assert dom0.directory("/l", tx) == ["x"]
    host.client().write("/l/y/deep", "1")
    assert dom0.directory("/l", tx) == ["x"]
    dom0.write("/l/x", "mine", tx)
    assert dom0.transaction_end(tx) is False


def test_pyxs_transaction_keeps_its_view(host):
    with PyxsClient(unix_socket_path=host.socket) as a, \
            PyxsClient(unix_socket_path=host.socket) as b:
        b.write(b"/px/v", b"1")
        a.transaction()
        assert a.read(b"/px/v") == b"1"
        b.write(b"/px/v", b"2")
        assert a.read(b"/px/v") == b"1"
        a.write(b"/px/w", b"x")
        assert b.exists(b"/px/w") is False
        assert a.commit() is False  # pyxs reports EAGAIN as a failed commit
        assert b.exists(b"/px/w") is False


def test_watches_fire_only_on_commit_and_not_on_eagain(dom0, host):
    q: queue.Queue = queue.Queue()
    w = host.client()
    dom0.write("/wq/a", "0")
    w.watch("/wq", "t", q)
    assert q.get(timeout=5) == ("/wq", "t")
    tx = dom0.transaction_start()
    dom0.read("/wq/a", tx)
    dom0.write("/wq/b", "1", tx)
    w.read("/")  # a round trip: anything sent before its reply has arrived
    assert q.empty()
    host.client().write("/wq/a", "1")
    assert q.get(timeout=5) == ("/wq/a", "t")
    assert dom0.transaction_end(tx) is False
    w.read("/")
    assert q.empty()  # a failed commit fires nothing
    tx = dom0.transaction_start()
    dom0.write("/wq/b", "1", tx)
    assert dom0.transaction_end(tx)
    assert q.get(timeout=5) == ("/wq/b", "t")


def test_xenstore_tools_retry_on_eagain(host):
    """xenstore-write runs its own transaction; a racing writer makes it retry."""
    procs = [subprocess.Popen(["sh", "-c", f"for i in $(seq 20); do xenstore-write "
                               f"/tools/{n} $i || exit 1; done"], env=host.env)
             for n in range(3)]
    assert all(p.wait(60) == 0 for p in procs)
    assert sorted(host.client().directory("/tools")) == ["0", "1", "2"]


def test_invalid_tx_errors(dom0):
    with pytest.raises(XenstoreError, match="ENOENT"):
        dom0.read("/", 99999)
