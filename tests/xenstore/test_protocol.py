"""Every xs_wire.h message type, replies echoing req_id/tx_id, Xen's error strings."""

from __future__ import annotations

import queue
import socket

import pytest

from pyxen.xenstore import XenstoreError
from pyxen.xenstore.wire import HEADER, Op


def raw(host) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(host.socket)
    return s


def recv_msg(s: socket.socket) -> tuple[int, int, int, bytes]:
    hdr = b""
    while len(hdr) < 16:
        chunk = s.recv(16 - len(hdr))
        if not chunk:
            raise ConnectionError
        hdr += chunk
    op, rid, tx, ln = HEADER.unpack(hdr)
    body = b""
    while len(body) < ln:
        body += s.recv(ln - len(body))
    return op, rid, tx, body


def test_reply_echoes_req_and_tx_id(host, dom0):
    dom0.write("/a", "1")
    s = raw(host)
    s.sendall(HEADER.pack(Op.READ, 0xDEADBEEF, 0, 3) + b"/a\0")
    assert recv_msg(s) == (Op.READ, 0xDEADBEEF, 0, b"1")
    s.sendall(HEADER.pack(Op.READ, 77, 12345, 3) + b"/a\0")  # unknown transaction
    assert recv_msg(s) == (Op.ERROR, 77, 12345, b"ENOENT\0")


@pytest.mark.parametrize("op,payload,err", [
    (Op.READ, b"/nope\0", "ENOENT"),
    (Op.READ, b"/a//b\0", "EINVAL"),
    (Op.READ, b"/a/\0", "EINVAL"),
    (Op.READ, b"/bad char\0", "EINVAL"),
    (Op.READ, b"/a", "EINVAL"),  # not NUL-terminated
    (Op.READ, b"", "EINVAL"),
    (Op.WRITE, b"/novalue-no-nul", "EINVAL"),
    (Op.RM, b"/\0", "EINVAL"),
    (Op.ERROR, b"x\0", "EINVAL"),
    (Op.WATCH_EVENT, b"x\0y\0", "EINVAL"),
    (20, b"\0", "EINVAL"),  # XS_RESTRICT, removed
    (9999, b"\0", "EINVAL"),
    (Op.TRANSACTION_END, b"T\0", "ENOENT"),
    (Op.GET_DOMAIN_PATH, b"abc\0", "EINVAL"),
    (Op.RELEASE, b"42\0", "ENOENT"),
    (Op.SET_PERMS, b"/\0x9\0", "EINVAL"),
    (Op.CONTROL, b"bogus\0", "EINVAL"),
    (Op.READ, b"/" + b"a" * 3100 + b"\0", "EINVAL"),  # over XENSTORE_ABS_PATH_MAX
])
def test_error_strings(dom0, op, payload, err):
    with pytest.raises(XenstoreError) as e:
        dom0.call(op, payload)
    assert e.value.name == err


def test_mkdir_rm_directory_and_implicit_parents(dom0):
    dom0.write("/x/y/z", "v")
    assert dom0.directory("/x") == ["y"]
    assert dom0.read("/x/y") == b""
    dom0.mkdir("/x/y")  # existing: fine
    dom0.mkdir("/x/w")
    assert dom0.directory("/x") == ["y", "w"]
    dom0.rm("/x/y")
    assert dom0.directory("/x") == ["w"]
    dom0.rm("/x/gone")  # absent, parent exists: OK as in Xen
    with pytest.raises(XenstoreError, match="ENOENT"):
        dom0.rm("/x/gone/deeper")


def test_values_are_binary_and_up_to_payload_max(dom0):
    blob = bytes(range(256)) * 15
    dom0.write("/bin", blob)
    assert dom0.read("/bin") == blob


def test_directory_part_assembles_big_directories(dom0):
    names = [f"child-with-a-long-name-{i:05d}" for i in range(400)]
    tx = dom0.transaction_start()
    for n in names:
        dom0.write(f"/big/{n}", "", tx)
    assert dom0.transaction_end(tx)
    with pytest.raises(XenstoreError, match="E2BIG"):
        dom0.directory("/big")
    got, offset = [], 0
    while True:
        _gen, part, done = dom0.directory_part("/big", offset)
        got += part
        offset += sum(len(p) + 1 for p in part)
        if done:
            break
    assert got == names


def test_perms_roundtrip_and_get_perms(dom0):
    dom0.write("/p", "")
    dom0.set_perms("/p", ["n5", "r6", "w7", "b8"])
    assert dom0.get_perms("/p") == ["n5", "r6", "w7", "b8"]
    dom0.write("/p/child", "")
    assert dom0.get_perms("/p/child") == ["n5", "r6", "w7", "b8"]  # inherited


def test_watch_fires_once_at_registration_and_on_subtree(dom0, host):
    q: queue.Queue = queue.Queue()
    dom0.watch("/w", "tok", q)
    assert q.get(timeout=5) == ("/w", "tok")
    other = host.client()
    other.write("/w/a/b", "1")
    assert q.get(timeout=5) == ("/w/a/b", "tok")
    other.write("/wx", "1")  # not in the subtree
    other.rm("/w")
    assert q.get(timeout=5) == ("/w", "tok")
    with pytest.raises(XenstoreError, match="EEXIST"):
        dom0.watch("/w", "tok", q)
    dom0.unwatch("/w", "tok")
    with pytest.raises(XenstoreError, match="ENOENT"):
        dom0.unwatch("/w", "tok")
    other.write("/w/c", "1")
    dom0.read("/")  # a round trip: events sent before its reply have arrived
    assert q.empty()


def test_rm_fires_watches_below_with_their_own_path(dom0, host):
    q: queue.Queue = queue.Queue()
    dom0.write("/r/a/b", "")
    dom0.watch("/r/a/b", "deep", q)
    assert q.get(timeout=5) == ("/r/a/b", "deep")
    host.client().rm("/r")
    assert q.get(timeout=5) == ("/r/a/b", "deep")


def test_relative_watch_gets_relative_paths(dom0):
    q: queue.Queue = queue.Queue()
    dom0.watch("device", "rel", q)
    assert q.get(timeout=5) == ("device", "rel")
    dom0.write("/local/domain/0/device/vif/0", "x")
    assert q.get(timeout=5) == ("device/vif/0", "rel")


def test_reset_watches(dom0, host):
    q: queue.Queue = queue.Queue()
    dom0.watch("/rw", "t", q)
    q.get(timeout=5)
    dom0.reset_watches()
    host.client().write("/rw/x", "1")
    dom0.read("/")
    assert q.empty()


def test_introduce_release_and_special_watches(dom0, host):
    q: queue.Queue = queue.Queue()
    dom0.watch("@introduceDomain", "intro", q)
    dom0.watch("@releaseDomain", "rel", q)
    assert {q.get(timeout=5), q.get(timeout=5)} == {("@introduceDomain", "intro"),
                                                    ("@releaseDomain", "rel")}
    assert not dom0.is_domain_introduced(5)
    assert dom0.is_domain_introduced(0)
    dom0.introduce(5, 0x1234, 3)
    assert q.get(timeout=5) == ("@introduceDomain", "intro")
    assert dom0.is_domain_introduced(5)
    dom0.resume(5)
    host.server.release_domain(5)  # in-process, as hostd does
    assert q.get(timeout=5) == ("@releaseDomain", "rel")
    assert not dom0.is_domain_introduced(5)
    host.server.introduce_domain(6)  # no ring yet: allowed in-process
    assert q.get(timeout=5) == ("@introduceDomain", "intro")
    dom0.release(6)
    assert q.get(timeout=5) == ("@releaseDomain", "rel")
    with pytest.raises(XenstoreError, match="ENOENT"):
        dom0.resume(6)


def test_get_domain_path(dom0):
    assert dom0.get_domain_path(0) == "/local/domain/0"
    assert dom0.get_domain_path(17) == "/local/domain/17"


def test_control_print_log_quota_check(dom0):
    assert dom0.control("print", "hello from the test") == "OK"
    assert dom0.control("log", "on") == "OK"
    assert dom0.control("log", "off") == "OK"
    text = dom0.control("quota")
    assert "nodes" in text and "1000" in text and "watches" in text
    assert dom0.control("quota", "watches", "256") == "OK"
    assert "256" in dom0.control("quota")
    dom0.write("/local/domain/0/x", "")
    assert "nodes" in dom0.control("quota", "0")
    assert dom0.control("check") == "OK"
    assert "print" in dom0.control("help")


def test_special_node_perms(dom0):
    assert dom0.get_perms("@releaseDomain") == ["n0"]
    dom0.set_perms("@releaseDomain", ["n0", "r5"])
    assert dom0.get_perms("@releaseDomain") == ["n0", "r5"]
    with pytest.raises(XenstoreError, match="EINVAL"):
        dom0.read("@releaseDomain")


def test_transaction_start_inside_transaction_is_ebusy(dom0):
    tx = dom0.transaction_start()
    with pytest.raises(XenstoreError, match="EBUSY"):
        dom0.call(Op.TRANSACTION_START, b"\0", tx)
    with pytest.raises(XenstoreError, match="EINVAL"):
        dom0.call(Op.TRANSACTION_END, b"X\0", tx)
    assert dom0.transaction_end(tx, commit=False)
