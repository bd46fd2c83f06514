"""Transactions: reads of the node as first accessed, conflicts (EAGAIN) and retry, abort, commit-time watches."""

from __future__ import annotations

import queue
import threading

import pytest
from pyxs import Client as PyxsClient

from pyxen.xenstore import XenstoreError


def test_isolation_and_commit(dom0, host):
    other = host.client()
    dom0.write("/t/a", "0")
    tx = dom0.transaction_start()
    dom0.write("/t/a", "1", tx)
    dom0.write("/t/new/deep", "x", tx)
    assert dom0.read("/t/a", tx) == b"1"
    assert other.read("/t/a") == b"0"  # not visible outside before commit
    assert not other.exists("/t/new")
    assert dom0.transaction_end(tx)
    assert other.read("/t/a") == b"1" and other.read("/t/new/deep") == b"x"


def test_abort_discards(dom0):
    tx = dom0.transaction_start()
    dom0.write("/ab/x", "1", tx)
    dom0.rm("/local", tx)
    assert dom0.transaction_end(tx, commit=False)
    assert not dom0.exists("/ab/x") and dom0.exists("/local/domain")


def test_conflict_gets_eagain_and_retry_wins(dom0, host):
    other = host.client()
    dom0.write("/counter", "0")
    t1 = dom0.transaction_start()
    t2 = other.transaction_start()
    v1 = int(dom0.read("/counter", t1))
    v2 = int(other.read("/counter", t2))
    dom0.write("/counter", str(v1 + 1), t1)
    other.write("/counter", str(v2 + 1), t2)
    assert dom0.transaction_end(t1) is True
    assert other.transaction_end(t2) is False  # EAGAIN: the loser retries
    other.run_transaction(lambda t: other.write("/counter",
                                                str(int(other.read("/counter", t)) + 1), t))
    assert dom0.read("/counter") == b"2"


def test_reads_see_the_node_as_first_accessed(dom0, host):
    dom0.write("/snap", "old")
    tx = dom0.transaction_start()
    host.client().write("/snap", "new")
    # Changed before the transaction looked at it: Xen compares generations from the
    # first access, so this is what the transaction works on and commit succeeds.
    assert dom0.read("/snap", tx) == b"new"
    assert dom0.transaction_end(tx) is True
    tx = dom0.transaction_start()
    assert dom0.read("/snap", tx) == b"new"
    host.client().write("/snap", "newer")
    assert dom0.read("/snap", tx) == b"new"  # keeps the value it first read
    assert dom0.transaction_end(tx) is False


def test_deleted_after_access_fails_commit(dom0, host):
    dom0.write("/del/x", "1")
    tx = dom0.transaction_start()
    assert dom0.read("/del/x", tx) == b"1"
    host.client().rm("/del/x")
    assert dom0.read("/del/x", tx) == b"1"
    dom0.write("/del/y", "1", tx)
    assert dom0.transaction_end(tx) is False


def test_pyxs_transactions_conflict_and_retry(host):
    paths = [b"/pyxs-tx/counter"]
    with PyxsClient(unix_socket_path=host.socket) as c:
        c.write(paths[0], b"0")

    def incr(n: int) -> None:
        with PyxsClient(unix_socket_path=host.socket) as c:
            for _ in range(n):
                while True:
                    c.transaction()
                    v = int(c.read(paths[0]))
                    c.write(paths[0], str(v + 1).encode())
                    if c.commit():
                        break

    threads = [threading.Thread(target=incr, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with PyxsClient(unix_socket_path=host.socket) as c:
        assert c.read(paths[0]) == b"100"
    assert host.server.stats()["conflicts"] >= 0


def test_many_concurrent_transactions(dom0):
    txs = [dom0.transaction_start() for _ in range(200)]
    assert len(set(txs)) == 200 and 0 not in txs
    for i, tx in enumerate(txs):
        dom0.write(f"/many/{i}", str(i), tx)
    # All create children of /many, so only the first one to commit wins (as in Xen,
    # where the parent's child list is part of each transaction's writes).
    results = [dom0.transaction_end(tx) for tx in txs]
    assert results[0] is True and results.count(True) == 1
    for i in range(50):
        dom0.write(f"/many/{i}", "")
    txs = [dom0.transaction_start() for _ in range(50)]
    for i, tx in enumerate(txs):
        dom0.write(f"/many/{i}", "again", tx)  # existing, disjoint nodes: no conflict
    assert all([dom0.transaction_end(tx) for tx in txs])
    assert dom0.read("/many/49") == b"again"


def test_watches_fire_only_on_commit(dom0, host):
    q: queue.Queue = queue.Queue()
    watcher = host.client()
    dom0.write("/wt", "")
    watcher.watch("/wt", "t", q)
    assert q.get(timeout=5) == ("/wt", "t")
    tx = dom0.transaction_start()
    dom0.write("/wt/a", "1", tx)
    dom0.write("/wt/b", "1", tx)
    watcher.read("/")  # a round trip: events sent before its reply have arrived
    assert q.empty()
    assert dom0.transaction_end(tx)
    assert {q.get(timeout=5), q.get(timeout=5)} == {("/wt/a", "t"), ("/wt/b", "t")}
    tx = dom0.transaction_start()
    dom0.write("/wt/c", "1", tx)
    dom0.transaction_end(tx, commit=False)
    watcher.read("/")
    assert q.empty()


def test_transaction_ops_with_unknown_id(dom0):
    with pytest.raises(XenstoreError, match="ENOENT"):
        dom0.read("/", 424242)
    tx = dom0.transaction_start()
    assert dom0.transaction_end(tx)
    with pytest.raises(XenstoreError, match="ENOENT"):
        dom0.write("/x", "1", tx)  # ended transactions are gone
