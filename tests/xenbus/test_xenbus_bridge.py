"""The VMM <-> xenstored bridge (fd passing over xenbus.sock) with real parts: a real
XenstoreServer and client, real event-channel tables (pyxen.hypervisor.event_channel),
a store page in its own memfd, and a Python ring "guest" (tests/xenstore/xs_guest.py)."""

from __future__ import annotations

import os
import queue
import select
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from xs_guest import RingGuest

from pyxen.backends.xenbus import (
    SPECIALPAGE_XENSTORE,
    SpecialPage,
    StoreBridge,
    request_ring,
    ring_mapper,
    special_pfn,
)
from pyxen.hypervisor.event_channel import (
    ECS_FREE,
    ECS_INTERDOMAIN,
    BackendEventChannels,
    EvtchnHost,
)
from pyxen.xenstore import XenstoreClient, XenstoreError, XenstoreServer

DOMID = 7


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def store_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("memfd:store" in line for line in f)


@dataclass
class Rig:
    root: Path
    server: XenstoreServer
    dom0: XenstoreClient
    bridge: StoreBridge
    guest: RingGuest
    guest_port: object  # the guest's end (BackendPort in a second table)
    page: SpecialPage


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    host = EvtchnHost()
    dom0 = BackendEventChannels(host, 0)
    guest_tab = BackendEventChannels(host, DOMID)  # stands in for the guest's table
    gport = guest_tab.open_unbound(0)  # the toolstack's alloc_unbound(domid, remote 0)
    page = SpecialPage("store", special_pfn(SPECIALPAGE_XENSTORE))
    ddir = tmp_path / "domains" / str(DOMID)
    ddir.mkdir(parents=True)
    bridge = StoreBridge(page, gport.port, ddir / "xenbus.sock",
                         bind=lambda: dom0.connect(DOMID, gport.port)).start()
    server = XenstoreServer(tmp_path / "xenstored").start()
    server.set_ring_mapper(ring_mapper(tmp_path))
    client = XenstoreClient(server.socket_path)
    client.write(f"/local/domain/{DOMID}", "")
    client.set_perms(f"/local/domain/{DOMID}", ["n0", f"r{DOMID}"])  # as libxl does
    client.write(f"/local/domain/{DOMID}/name", "bridged")
    client.write(f"/local/domain/{DOMID}/data", "")
    client.set_perms(f"/local/domain/{DOMID}/data", [f"n{DOMID}"])

    guest = RingGuest(page.map)
    guest.kick = gport.notify  # EVTCHNOP_send on the guest's port

    stop = threading.Event()

    def upcalls() -> None:  # the guest's event delivery: its port's eventfd
        while not stop.is_set():
            r, _, _ = select.select([gport.fileno()], [], [], 0.1)
            if r:
                gport.consume()
                guest.notify()

    t = threading.Thread(target=upcalls, daemon=True)
    t.start()
    yield Rig(tmp_path, server, client, bridge, guest, gport, page)
    stop.set()
    t.join()
    client.close()
    server.stop()
    bridge.close()


def test_introduce_maps_the_ring_and_serves_the_guest(rig: Rig) -> None:
    rig.server.introduce_domain(DOMID, gfn=rig.page.pfn, port=rig.guest_port.port)
    assert rig.guest_port.state == ECS_INTERDOMAIN  # xenstored's end bound on INTRODUCE
    assert rig.guest.read("name") == b"bridged"
    rig.guest.write("data/hello", b"from the ring")
    assert rig.dom0.read(f"/local/domain/{DOMID}/data/hello") == b"from the ring"
    with pytest.raises(XenstoreError, match="EACCES"):
        rig.guest.write(f"/local/domain/{DOMID}/name", b"not mine")


def test_watch_event_reaches_the_guest(rig: Rig) -> None:
    rig.server.introduce_domain(DOMID, gfn=rig.page.pfn, port=rig.guest_port.port)
    from pyxen.xenstore.wire import Op

    rig.guest.call(Op.WATCH, b"data/test\0tok\0")
    rig.dom0.write(f"/local/domain/{DOMID}/data/test", "new value")
    deadline = 50
    while ("data/test", "tok") not in rig.guest.events[1:] and deadline:
        try:  # a watch event arrives on its own: pull it off the ring
            op, _, _, payload = rig.guest.recv_msg(timeout=0.2)
            assert op == Op.WATCH_EVENT
            p = payload.split(b"\0")
            rig.guest.events.append((p[0].decode(), p[1].decode()))
        except TimeoutError:
            deadline -= 1
    assert rig.guest.events.count(("data/test", "tok")) >= 2  # on WATCH, on the write


def test_release_fires_and_closes_everything(rig: Rig) -> None:
    events: queue.Queue = queue.Queue()
    rig.dom0.watch("@releaseDomain", "rel", events)
    events.get(timeout=5)  # fires once when set
    rig.server.introduce_domain(DOMID, gfn=rig.page.pfn, port=rig.guest_port.port)
    assert rig.guest.read("name") == b"bridged"
    fds, maps = open_fds(), store_mappings()  # both ends live in this test process
    rig.server.release_domain(DOMID)
    assert events.get(timeout=5)[0] == "@releaseDomain"
    # xenstored's side handed back its kick and notify eventfds and its page mapping
    # (Python's mmap holds a dup of the page's fd: 3 fds)
    assert (open_fds(), store_mappings()) == (fds - 3, maps - 1)


def test_wrong_gfn_or_port_is_refused(rig: Rig) -> None:
    sock = rig.root / "domains" / str(DOMID) / "xenbus.sock"
    with pytest.raises(ValueError, match="no xenstore page"):
        request_ring(sock, rig.page.pfn + 1, rig.guest_port.port)
    with pytest.raises(ValueError, match="no xenstore page"):
        request_ring(sock, rig.page.pfn, rig.guest_port.port + 1)
    # INTRODUCE with a bad gfn: the domain is known, but no ring is served.
    rig.server.introduce_domain(DOMID, gfn=0x1234, port=rig.guest_port.port)
    assert rig.server.is_domain_introduced(DOMID)
    assert rig.guest_port.state != ECS_FREE


def test_reintroduce_after_a_xenstored_restart(rig: Rig, tmp_path: Path) -> None:
    rig.server.introduce_domain(DOMID, gfn=rig.page.pfn, port=rig.guest_port.port)
    assert rig.guest.read("name") == b"bridged"
    rig.dom0.close()
    rig.server.stop()
    server = XenstoreServer(tmp_path / "xenstored").start()
    server.set_ring_mapper(ring_mapper(tmp_path))
    try:
        server.introduce_domain(DOMID, gfn=rig.page.pfn, port=rig.guest_port.port)
        assert rig.guest.read("name") == b"bridged"  # same channel, new notify eventfd
    finally:
        server.stop()
    rig.server = XenstoreServer(tmp_path / "xenstored2").start()
    rig.dom0 = XenstoreClient(rig.server.socket_path)


@pytest.mark.parametrize("junk", [b"\n", b"not json\n", b"[1, 2]\n", b'{"op": "nope"}\n',
                                  b"x" * 10000, b'{"op": "map", "gfn": "a", "port": null}\n'])
def test_junk_on_the_socket_is_refused_and_service_goes_on(rig: Rig, junk: bytes) -> None:
    import socket

    sock = rig.root / "domains" / str(DOMID) / "xenbus.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock))
        try:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            data, fds, _, _ = socket.recv_fds(s, 4096, 3)
        except OSError:
            data, fds = b"", []
    assert fds == []
    assert b'"ok": true' not in data
    rig.server.introduce_domain(DOMID, gfn=rig.page.pfn, port=rig.guest_port.port)
    assert rig.guest.read("name") == b"bridged"  # the bridge still serves
