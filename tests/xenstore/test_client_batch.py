"""XenstoreClient.call_many: requests sent back to back, replies in order, errors after
all replies (hostd writes a new domain's entries so: toolstack/xsdomain.py)."""

from __future__ import annotations

import queue

import pytest

from pyxen.xenstore.wire import Op, XenstoreError


def _writes(n: int, base: str = "/batch") -> list[tuple[int, bytes]]:
    return [(Op.WRITE, f"{base}/k{i}".encode() + b"\0" + str(i).encode()) for i in range(n)]


@pytest.mark.parametrize("reader", [False, True], ids=["inline", "reader-thread"])
def test_many_requests_one_batch(dom0, reader):
    if reader:  # a watch starts the client's reader thread: replies come through it
        dom0.watch("/elsewhere", "t", queue.Queue())
    # more than xenstored's outstanding-request quota (20): it reads on as replies go
    replies = dom0.call_many(_writes(60))
    assert all(r.rstrip(b"\0") == b"OK" for r in replies)
    reads = dom0.call_many([(Op.READ, f"/batch/k{i}".encode() + b"\0") for i in range(60)])
    assert reads == [str(i).encode() for i in range(60)]


def test_batch_in_a_transaction_and_first_error(dom0):
    tx = dom0.transaction_start()
    dom0.call_many(_writes(5, "/txb"), tx)
    with pytest.raises(XenstoreError) as e:  # the read of a missing node fails; the rest ran
        dom0.call_many([(Op.WRITE, b"/txb/x\0" + b"1"), (Op.READ, b"/txb/missing\0"),
                        (Op.WRITE, b"/txb/y\0" + b"2")], tx)
    assert e.value.name == "ENOENT"
    assert dom0.transaction_end(tx, True)
    assert dom0.read("/txb/k4") == b"4" and dom0.read("/txb/y") == b"2"
