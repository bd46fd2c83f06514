"""The shared-ring transport, driven from a Python "guest" over a memfd page."""

from __future__ import annotations

import os
import queue

import pytest
from xs_guest import RingGuest, new_page

from pyxen.xenstore import RingTransport, XenstoreError
from pyxen.xenstore.ring import CONNECTION, ERROR, REQ_PROD, SERVER_FEATURES
from pyxen.xenstore.wire import (
    HEADER,
    XENSTORE_ERROR_NONE,
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_RECONNECT,
    Op,
)


def attach(host, domid: int, *, eventfd: bool = False) -> tuple[RingGuest, RingTransport]:
    page = new_page()
    guest = RingGuest(page)
    if eventfd:
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        ring = RingTransport(page, guest.notify, kick_fd=efd)
        guest.kick = lambda: os.eventfd_write(efd, 1)
    else:
        ring = RingTransport(page, guest.notify)
        guest.kick = ring.kick
    host.server.introduce_domain(domid, ring)
    return guest, ring


@pytest.fixture
def home(dom0):
    dom0.write("/local/domain/3/name", "ringguest")
    dom0.set_perms("/local/domain/3", ["n3"])
    dom0.set_perms("/local/domain/3/name", ["n0", "r3"])
    return dom0


def test_ring_guest_reads_and_writes_as_its_domain(host, home):
    guest, _ = attach(host, 3)
    assert guest.get(SERVER_FEATURES) == 3  # RECONNECTION | ERROR
    assert guest.read("name") == b"ringguest"
    guest.write("data/key", b"value")
    assert home.read("/local/domain/3/data/key") == b"value"
    assert home.get_perms("/local/domain/3/data/key") == ["n3"]
    with pytest.raises(XenstoreError, match="EACCES"):
        guest.write("/local/domain/0/x", b"no")
    with pytest.raises(XenstoreError, match="EACCES"):
        guest.write("name", b"mine?")


def test_ring_wraps_many_times_with_big_messages(host, home):
    guest, _ = attach(host, 3, eventfd=True)
    for i in range(60):
        v = bytes([65 + i % 26]) * (1100 + i * 131 % 900)  # over a ring-full each
        guest.write(f"data/{i}", v)
        assert guest.read(f"data/{i}") == v


def test_ring_watch_events(host, home):
    guest, _ = attach(host, 3)
    guest.call(Op.WATCH, b"data\0tok\0")
    home.write("/local/domain/3/data/x", "1")
    guest.read("name")  # events arrive before later replies
    assert ("data", "tok") in guest.events and ("data/x", "tok") in guest.events


def test_corrupt_indices_flag_error_and_others_keep_working(host, home):
    guest, _ = attach(host, 3)
    guest.read("name")
    guest.put(REQ_PROD, guest.get(REQ_PROD) + 5000)  # impossible: > ring size ahead
    guest.notified.clear()
    guest.kick()
    assert guest.notified.wait(5)
    assert guest.get(ERROR) == XENSTORE_ERROR_RINGIDX
    assert home.read("/local/domain/3/name") == b"ringguest"  # daemon fine
    # The guest asks to reconnect: fresh state, usable again.
    guest.put(CONNECTION, XENSTORE_RECONNECT)
    guest.notified.clear()
    guest.kick()
    assert guest.notified.wait(5)
    assert guest.get(CONNECTION) == 0 and guest.get(ERROR) == XENSTORE_ERROR_NONE
    guest._rbuf.clear()
    assert guest.read("name") == b"ringguest"


def test_oversized_request_is_a_protocol_error(host, home):
    guest, _ = attach(host, 3)
    guest.notified.clear()
    guest.send_raw(HEADER.pack(Op.WRITE, 1, 0, 5000) + b"x" * 100)
    assert guest.notified.wait(5)
    assert guest.get(ERROR) == XENSTORE_ERROR_PROTO
    other, _ = attach(host, 4)
    with pytest.raises(XenstoreError, match="EACCES"):
        other.read("/local/domain/3/name")


def test_release_drops_the_ring_and_fires_release_watch(host, home):
    q: queue.Queue = queue.Queue()
    home.watch("@releaseDomain", "r", q)
    q.get(timeout=5)
    guest, ring = attach(host, 3)
    guest.read("name")
    host.server.release_domain(3)
    assert q.get(timeout=5) == ("@releaseDomain", "r")
    assert ring.conn is None


def test_wire_introduce_uses_the_ring_mapper(host, home):
    made: dict[int, RingGuest] = {}

    def mapper(domid: int, gfn: int, port: int) -> RingTransport:
        page = new_page()
        g = RingGuest(page)
        r = RingTransport(page, g.notify)
        g.kick = r.kick
        made[domid] = g
        return r

    host.server.set_ring_mapper(mapper)
    home.introduce(3, 0xFEFFF, 1)
    assert made[3].read("name") == b"ringguest"


def test_ring_rejects_small_or_readonly_buffers():
    with pytest.raises(ValueError):
        RingTransport(bytearray(100), lambda: None)
    with pytest.raises(ValueError):
        RingTransport(bytes(4096), lambda: None)
