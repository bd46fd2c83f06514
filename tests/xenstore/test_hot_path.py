"""The inline READ path and the per-connection path cache keep every check of the
slow path: framing, permissions, quotas, and journalled writes before replies."""

from __future__ import annotations

import json

import pytest

from pyxen.xenstore import XenstoreError
from pyxen.xenstore.wire import Op


def test_cached_path_does_not_excuse_a_missing_nul(dom0):
    dom0.call(Op.WRITE, b"/hp/a\0v")  # caches the raw path b"/hp/a"
    assert dom0.call(Op.READ, b"/hp/a\0") == b"v"
    assert dom0.call(Op.READ, b"/hp/a\0") == b"v"  # now answered inline
    with pytest.raises(XenstoreError, match="EINVAL"):
        dom0.call(Op.READ, b"/hp/a")


def test_inline_read_checks_permissions_every_time(dom0, host):
    dom0.write("/hp/p", "secret")
    dom0.set_perms("/hp/p", ["n0", "r5"])
    u = host.domu(5)
    assert u.read("/hp/p") == b"secret"
    assert u.read("/hp/p") == b"secret"
    dom0.set_perms("/hp/p", ["n0"])
    with pytest.raises(XenstoreError, match="EACCES"):
        u.read("/hp/p")
    dom0.rm("/hp/p")
    with pytest.raises(XenstoreError, match="ENOENT|EACCES"):
        u.read("/hp/p")


def test_inline_read_in_a_transaction_uses_the_transaction(dom0, host):
    dom0.write("/hp/t", "0")
    assert dom0.read("/hp/t") == b"0"  # cached, inline from now on
    tx = dom0.transaction_start()
    dom0.write("/hp/t", "1", tx)
    assert dom0.read("/hp/t", tx) == b"1"
    assert dom0.read("/hp/t") == b"0"
    assert dom0.transaction_end(tx)
    assert dom0.read("/hp/t") == b"1"


def test_path_quota_change_reaches_cached_paths(dom0, host):
    u = host.domu(6)
    long = "x" * 40
    dom0.write(f"/local/domain/6/{long}", "v")
    dom0.set_perms(f"/local/domain/6/{long}", ["n6"])
    assert u.read(long) == b"v"
    assert u.read(long) == b"v"
    dom0.control("quota", "path-length", "10")
    with pytest.raises(XenstoreError, match="EINVAL"):
        u.read(long)
    with pytest.raises(XenstoreError, match="EINVAL"):
        u.write(long, "w")


def test_inline_write_checks_permissions_and_quotas_every_time(dom0, small_host):
    """A WRITE of a node that exists, with a path the connection sent before, is
    answered inline; it must still refuse what store.write() refuses."""
    d0 = small_host.client()
    d0.write("/local/domain/7/w", "0")
    d0.set_perms("/local/domain/7/w", ["n0", "w7"])
    u = small_host.domu(7)
    u.write("w", "1")
    u.write("w", "2")  # inline from now on
    assert d0.read("/local/domain/7/w") == b"2"
    d0.set_perms("/local/domain/7/w", ["n0", "r7"])
    with pytest.raises(XenstoreError, match="EACCES"):
        u.write("w", "3")
    d0.set_perms("/local/domain/7/w", ["n0", "b7"])
    with pytest.raises(XenstoreError, match="EQUOTA"):
        u.write("w", "x" * 300)  # over node-size 256
    u.write("w", "4")
    assert d0.read("/local/domain/7/w") == b"4"


def test_inline_write_is_refused_on_the_read_only_socket(dom0, host):
    dom0.write("/hp/ro", "v")
    ro = host.client(host.server.ro_socket_path)
    assert ro.read("/hp/ro") == b"v"  # the raw path is now cached on this connection
    with pytest.raises(XenstoreError, match="EROFS"):
        ro.write("/hp/ro", "w")
    assert dom0.read("/hp/ro") == b"v"


def test_inline_write_fires_watches_in_order_with_relative_paths(dom0, host):
    import queue

    dom0.write("/local/domain/8/dev/x", "0")
    dom0.set_perms("/local/domain/8", ["n8"])
    dom0.set_perms("/local/domain/8/dev", ["n8"])
    dom0.set_perms("/local/domain/8/dev/x", ["n8"])
    u = host.domu(8)
    q: queue.Queue = queue.Queue()
    u.watch("dev", "rel", q)
    u.watch("/local/domain/8/dev/x", "abs", q)
    assert {q.get(timeout=5) for _ in range(2)} == {
        ("dev", "rel"), ("/local/domain/8/dev/x", "abs")}
    for v in ("1", "2"):  # the second is inline
        u.write("dev/x", v)
        assert [q.get(timeout=5), q.get(timeout=5)] == [
            ("/local/domain/8/dev/x", "abs"), ("dev/x", "rel")]
    dom0.set_perms("/local/domain/8/dev/x", ["n0"])  # u may no longer read it
    dom0.write("/local/domain/8/dev/x", "3")
    dom0.write("/local/domain/8/dev/x", "4")
    assert u.read("dev") is not None  # a round trip: no event was queued before it
    assert q.empty()


def test_inline_write_in_a_transaction_is_private_until_commit(dom0, host):
    import queue

    dom0.write("/hp/tw", "0")
    w = host.client()
    q: queue.Queue = queue.Queue()
    w.watch("/hp/tw", "t", q)
    assert q.get(timeout=5) == ("/hp/tw", "t")
    tx = dom0.transaction_start()
    dom0.write("/hp/tw", "1", tx)
    dom0.write("/hp/tw", "2", tx)  # inline
    assert dom0.read("/hp/tw", tx) == b"2"
    assert dom0.read("/hp/tw") == b"0"
    assert w.read("/hp/tw") == b"0" and q.empty()
    assert dom0.transaction_end(tx)
    assert dom0.read("/hp/tw") == b"2"
    assert q.get(timeout=5) == ("/hp/tw", "t")  # fired at commit
    # a conflicting change still makes the commit fail
    tx = dom0.transaction_start()
    dom0.write("/hp/tw", "3", tx)
    w.write("/hp/tw", "other")
    assert not dom0.transaction_end(tx)
    assert dom0.read("/hp/tw") == b"other"


def test_pipelined_requests_each_get_their_reply(dom0, host):
    """Many requests in one send: answered in order, writes journalled first."""
    import socket
    import struct

    s = socket.socket(socket.AF_UNIX)
    s.connect(host.socket)
    msgs = b""
    for i in range(100):
        p = b"/hp/pipe/%d\0" % (i % 7)
        if i % 3 == 0:
            body = p + b"%d" % i
            msgs += struct.pack("<IIII", Op.WRITE, i, 0, len(body)) + body
        else:
            msgs += struct.pack("<IIII", Op.READ, i, 0, len(p)) + p
    s.sendall(msgs)
    got = []
    buf = b""
    while len(got) < 100:
        buf += s.recv(65536)
        while len(buf) >= 16:
            op, rid, tx, ln = struct.unpack_from("<IIII", buf)
            if len(buf) < 16 + ln:
                break
            got.append((op, rid, buf[16:16 + ln]))
            buf = buf[16 + ln:]
    s.close()
    assert [r[1] for r in got] == list(range(100))
    assert all(op in (Op.WRITE, Op.READ, Op.ERROR) for op, _, _ in got)
    assert got[99][0] == Op.WRITE and got[99][2] == b"OK\0"
    # everything acknowledged is in the journal already
    lines = (host.state_dir / "journal").read_text().splitlines()
    written = {}
    for line in lines:
        for p, v, _ in json.loads(line).get("n", []):
            written[p] = v
    for i in range(0, 100, 3):
        assert f"/hp/pipe/{i % 7}" in written
    assert written["/hp/pipe/1"] == "99"


def test_sigkill_under_concurrent_writers_keeps_every_acknowledged_write(tmp_path):
    """Group commit: with several clients writing at once, a daemon killed with
    SIGKILL at a random moment still has, after a restart, every write it had
    acknowledged (replies leave only after the turn's journal line is written)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from pyxen.xenstore import XenstoreClient

    state = tmp_path / "xs"

    def start() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "pyxen.xenstore", "--state-dir",
                              str(state)], stdout=subprocess.PIPE, text=True)
        assert "serving" in p.stdout.readline()
        return p

    proc = start()
    acked = [-1] * 6

    def writer(i: int) -> None:
        try:
            c = XenstoreClient(state / "socket", timeout=10)
            for n in range(100000):
                c.write(f"/gc/t{i}/{n}", str(n))
                acked[i] = n
        except (OSError, XenstoreError, EOFError, ConnectionError):
            pass  # the daemon died under us

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for t in threads:
        t.join(20)
    assert min(acked) > 0
    proc = start()
    try:
        c = XenstoreClient(state / "socket")
        for i, last in enumerate(acked):
            for n in range(last + 1):
                assert c.read(f"/gc/t{i}/{n}") == str(n).encode()
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)
