"""Never down: hostile or stuck clients are answered or dropped; others keep working."""

from __future__ import annotations

import socket
import time

import pytest
from test_protocol import raw, recv_msg

from pyxen.xenstore import XenstoreError
from pyxen.xenstore.wire import HEADER, Op


def _closed(s: socket.socket) -> bool:
    s.settimeout(10)
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_length_over_payload_max_disconnects(host, dom0):
    s = raw(host)
    s.sendall(HEADER.pack(Op.READ, 1, 0, 4097) + b"x" * 100)
    assert _closed(s)
    assert dom0.read("/local") == b""


def test_garbage_header_disconnects_others_fine(host, dom0):
    s = raw(host)
    s.sendall(b"\xff" * 64)
    assert _closed(s)
    dom0.write("/alive", "yes")
    assert dom0.read("/alive") == b"yes"


def test_unterminated_strings_and_bad_types_get_einval(host):
    s = raw(host)
    for op, payload in [(Op.READ, b"/local"), (Op.WATCH, b"/x\0tok"), (Op.MKDIR, b""),
                        (Op.SET_PERMS, b"/local"), (1234, b"zz"), (Op.INTRODUCE, b"1\0")]:
        s.sendall(HEADER.pack(op, 9, 0, len(payload)) + payload)
        assert recv_msg(s) == (Op.ERROR, 9, 0, b"EINVAL\0")


def test_client_that_never_reads_replies(host, dom0):
    """Requests from a client that never reads: the daemon stops reading it (the
    outstanding quota) and serves everyone else; its replies are all there later."""
    s = raw(host)
    s.setblocking(False)
    msg = HEADER.pack(Op.READ, 1, 0, 7) + b"/local\0"
    sent = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            sent += s.send(msg * 64)
        except BlockingIOError:
            break
    for i in range(20):
        dom0.write(f"/others/{i}", "ok")
    assert dom0.read("/others/19") == b"ok"
    s.setblocking(True)
    s.settimeout(10)
    op, rid, _tx, payload = recv_msg(s)
    assert (op, rid, payload) == (Op.READ, 1, b"")
    s.close()


def test_watch_flood_to_a_non_reader_drops_it(tmp_path):
    from xshost import Host

    from pyxen.xenstore import Quotas

    h = Host(tmp_path / "xs", Quotas(privileged_output=16 * 1024))
    try:
        s = raw(h)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(HEADER.pack(Op.WATCH, 1, 0, 4) + b"/\0t\0")
        writer = h.client()
        blob = "z" * 10
        long = "p" * 400
        for i in range(3000):
            writer.write(f"/flood/{long}{i % 10}", blob)
            if i % 500 == 0 and h.server.stats()["connections"] == 1:
                break
        assert h.server.stats()["connections"] == 1  # only the writer is left
        assert writer.read(f"/flood/{long}0") == blob.encode()
    finally:
        h.stop()


def test_exceptions_inside_handlers_cost_one_request(host, dom0, monkeypatch):
    from pyxen.xenstore import store

    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(store, "directory", boom)
    with pytest.raises(XenstoreError, match="EIO"):
        dom0.directory("/")
    monkeypatch.undo()
    assert "local" in dom0.directory("/")


def test_many_clients_connect_and_vanish(host, dom0):
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX)
        s.connect(host.socket)  # blocking: waits if the backlog is momentarily full
        s.sendall(HEADER.pack(Op.WATCH, 1, 0, 4) + b"/\0t\0")
        s.close()
    dom0.write("/after", "1")
    assert dom0.read("/after") == b"1"
    deadline = time.monotonic() + 20  # the daemon reaps the closed ones as it sees them
    while host.server.stats()["connections"] > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.server.stats()["connections"] == 1
