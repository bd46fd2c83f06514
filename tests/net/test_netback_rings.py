"""netback's rings against a frontend written in Python (pyfront.py): real guest memory,
grant table, event channels and TAP device; the host end seen through AF_PACKET."""

from __future__ import annotations

import struct
import time

import pytest
from netlan import needs_root_net
from pyfront import Front, Guest, frame

from pyxen.backends import netback as NB
from pyxen.backends import tap as T
from pyxen.hypervisor.public import netif as N

pytestmark = needs_root_net


@pytest.fixture
def guest() -> Guest:
    return Guest()


@pytest.fixture
def front(guest: Guest):
    f = Front(guest, "a")
    yield f
    f.close()


def test_tx_and_rx_one_frame(front: Front) -> None:
    front.send(frame(b"hello host" * 5), rid=3)
    assert front.tx_responses(1) == [(3, N.NETIF_RSP_OKAY)]
    vnet, data = front.host_recv()
    assert data == frame(b"hello host" * 5) and vnet[0] == 0
    front.post_rx(4)
    front.host_send(frame(b"hello guest" * 7))
    (rid, off, flags, status, data), = front.rx_responses(1)
    assert (off, flags & N.NETRXF_more_data, status) == (0, 0, len(frame(b"hello guest" * 7)))
    assert data == frame(b"hello guest" * 7)
    assert front.vif.stats().tx_packets == 1 and front.vif.stats().rx_packets == 1


def test_scatter_gather_both_ways(guest: Guest) -> None:
    f = Front(guest, "b", features=NB.Features(sg=True), mtu=9000)
    try:
        big = frame(bytes(range(256)) * 35)  # 8974 bytes: three slots each way
        f.send(big, rid=10)
        rsp = f.tx_responses(3)
        assert rsp == [(10, 0), (11, 0), (12, 0)]
        assert f.host_recv()[1] == big
        f.post_rx(8)
        f.host_send(big)
        got = f.rx_responses(3)
        assert [r[2] & N.NETRXF_more_data for r in got] == [N.NETRXF_more_data] * 2 + [0]
        assert b"".join(r[4] for r in got) == big
    finally:
        f.close()


def test_big_frame_to_a_frontend_without_sg_is_dropped(guest: Guest) -> None:
    f = Front(guest, "c", mtu=9000)
    try:
        f.post_rx(4)
        f.host_send(frame(b"x" * 6000))
        f.host_send(frame(b"small"))
        (r,) = f.rx_responses(1)
        assert r[4] == frame(b"small")
        assert f.vif.stats().rx_dropped == 1
    finally:
        f.close()


def _udp4(payload: bytes, csum: int = 0) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    udp = struct.pack("!HHHH", 1234, 5678, 8 + len(payload), csum)
    return b"\x00\x16\x3e\x00\x00\x01\x00\x16\x3e\x00\x00\x02\x08\x00" + ip + udp + payload


def test_tx_checksum_offload_and_gso_become_the_vnet_header(front: Front) -> None:
    front.send(_udp4(b"partial"), flags=N.NETTXF_csum_blank | N.NETTXF_data_validated)
    vnet, data = front.host_recv()
    assert vnet[0] == T.VIRTIO_NET_HDR_F_NEEDS_CSUM and vnet[4:] == (34, 6)
    front.send(_udp4(b"validated"), flags=N.NETTXF_data_validated, rid=2)
    assert front.host_recv()[1] == _udp4(b"validated")
    # csum_blank on a frame that is not IP: refused, nothing reaches the host
    front.send(frame(b"not ip at all"), flags=N.NETTXF_csum_blank, rid=3)
    rsp = front.tx_responses(3)
    assert rsp == [(1, 0), (2, 0), (3, N.NETIF_RSP_ERROR)]


def test_rx_partial_checksum_is_passed_as_csum_blank(front: Front) -> None:
    T.set_offload(front.vif.fds[0], True, False, False)  # what connect() does when offered
    front.post_rx(2)
    pkt = _udp4(b"from the host")
    front.host_send(pkt, (T.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6))
    (r,) = front.rx_responses(1)
    assert r[2] & (N.NETRXF_csum_blank | N.NETRXF_data_validated) == \
        N.NETRXF_csum_blank | N.NETRXF_data_validated
    assert r[4] == pkt


def test_multicast_control_filters_rx(guest: Guest) -> None:
    f = Front(guest, "d", features=NB.Features(multicast_control=True))
    try:
        group = b"\x01\x00\x5e\x00\x00\x05"
        add = struct.pack("<BB6s", N.XEN_NETIF_EXTRA_TYPE_MCAST_ADD, 0, group)
        f.send(frame(b"subscribe"), extras=[add], rid=4)
        assert f.tx_responses(2) == [(4, 0), (0, N.NETIF_RSP_NULL)]
        f.post_rx(4)
        f.host_send(frame(b"other group", dst=b"\x01\x00\x5e\x00\x00\x09"))
        f.host_send(frame(b"our group", dst=group))
        (r,) = f.rx_responses(1)
        assert r[4].endswith(b"our group")
    finally:
        f.close()


def test_multi_queue(guest: Guest) -> None:
    f = Front(guest, "e", nq=2)
    try:
        assert len(f.vif.fds) == 2 and len(f.vif.queues) == 2
        for q in (0, 1):
            f.send(frame(f"queue {q}".encode()), q=q, rid=q + 1)
        assert f.tx_responses(1, q=0) == [(1, 0)] and f.tx_responses(1, q=1) == [(2, 0)]
        got = {f.host_recv()[1], f.host_recv()[1]}
        assert got == {frame(b"queue 0"), frame(b"queue 1")}
    finally:
        f.close()


def test_rate_limit_paces_tx(guest: Guest) -> None:
    # 10000 bytes every 50 ms: 60000 bytes need at least 5 refills after the first credit
    f = Front(guest, "f", rate=NB.RateLimit(10000, 50000))
    try:
        start = time.monotonic()
        for k in range(6):
            f.send(frame(b"r" * (10000 - 14)) if False else frame(b"r" * 1486), rid=k)
        for _ in range(6):
            f.host_recv()
        assert f.tx_responses(6) == [(k, 0) for k in range(6)]
        big_start = time.monotonic()
        for k in range(40):  # 40 x 1500 = 60000 bytes
            f.send(frame(b"r" * 1486), rid=100 + k)
        for _ in range(40):
            f.host_recv()
        elapsed = time.monotonic() - big_start
        assert elapsed >= 0.2, elapsed  # a lower bound only: slowness cannot fail it
        assert start <= big_start
    finally:
        f.close()


# --- hostile frontends ------------------------------------------------------------------


def test_bad_grants_and_sizes_get_errors_and_the_queue_goes_on(front: Front, guest: Guest) -> None:
    front.post_tx([(4000, 0, 0, 1, 100)])  # an out-of-range grant ref
    ref, gfn = guest.grant()
    front.post_tx([(ref, 0, 0, 2, 10)])  # shorter than an Ethernet header
    ref2, gfn2 = guest.grant()
    guest.mem.write(gfn2 << 12, frame(b"z" * 50))
    front.post_tx([(ref2, 0, N.NETTXF_more_data, 3, 20), (ref2, 0, 0, 4, 64)])  # frags > total
    front.send(frame(b"still works"), rid=5)
    assert front.tx_responses(5) == [(1, -1), (2, -1), (3, -1), (4, -1), (5, 0)]
    assert front.host_recv()[1] == frame(b"still works")
    # RX into a read-only grant: an error response, not a write
    front.post_rx(1, readonly=True)
    front.host_send(frame(b"to a read-only page"))
    (r,) = front.rx_responses(1)
    assert r[3] == N.NETIF_RSP_ERROR
    assert front.vif.queues[0].broken is None


@pytest.mark.parametrize("attack", ["prod_beyond_ring", "slot_crosses_page",
                                    "missing_fragment", "bad_extra", "zero_gso",
                                    "too_many_slots"])
def test_protocol_violations_disable_only_that_queue(guest: Guest, attack: str) -> None:
    f = Front(guest, "g", nq=2)
    try:
        ref, gfn = guest.grant()
        guest.mem.write(gfn << 12, frame(b"x" * 100))
        if attack == "prod_beyond_ring":
            f.set_tx_prod(N.NET_TX_RING_SIZE + 5)
        elif attack == "slot_crosses_page":
            f.post_tx([(ref, 0, N.NETTXF_more_data, 1, 200), (ref, 4000, 0, 2, 100)])
        elif attack == "missing_fragment":
            f.post_tx([(ref, 0, N.NETTXF_more_data, 1, 200)])
        elif attack == "bad_extra":
            f.post_tx([(ref, 0, N.NETTXF_extra_info, 1, 100), bytes([9, 0]) + bytes(6)])
        elif attack == "zero_gso":
            f.post_tx([(ref, 0, N.NETTXF_extra_info, 1, 100),
                       struct.pack("<BBHBBH", 1, 0, 0, 1, 0, 0)])
        else:
            f.post_tx([(ref, 0, N.NETTXF_more_data, k, 100 if k == 0 else 1)
                       for k in range(25)] + [(ref, 0, 0, 25, 1)])
        q0 = f.vif.queues[0]
        deadline = time.monotonic() + 10
        while q0.broken is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert q0.broken is not None and q0.thread.is_alive()
        assert any("fatal error" in r for r in f.reports)
        f.send(frame(b"queue 1 still serves"), q=1, rid=7)
        assert f.tx_responses(1, q=1) == [(7, 0)]
        assert f.host_recv()[1] == frame(b"queue 1 still serves")
    finally:
        f.close()


def test_frontend_that_never_consumes_responses(front: Front) -> None:
    front.post_rx(3)
    for k in range(20):
        front.host_send(frame(b"flood %d" % k))
    got = front.rx_responses(3)
    assert len(got) == 3
    time.sleep(0.2)
    # nothing was written beyond the three buffers it posted; the backend waits
    prod = struct.unpack("<I", front.g.mem.read((front.queues[0].rx_gfn << 12) + 8, 4))[0]
    assert prod == 3
    front.post_rx(2)
    assert len(front.rx_responses(2)) == 2
    assert front.vif.queues[0].broken is None


def _tcp4(payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(payload), 1, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    return b"\x00\x16\x3e\x00\x00\x01\x00\x16\x3e\x00\x00\x02\x08\x00" + ip + tcp + payload


def test_tx_gso_becomes_a_tcp_segment_for_the_host(guest: Guest) -> None:
    f = Front(guest, "h", features=NB.Features(sg=True, gso_tcpv4=True))
    try:
        pkt = _tcp4(b"s" * 3000)  # two MSS-sized segments once the host splits it
        gso = struct.pack("<BBHBBH", N.XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448,
                          N.XEN_NETIF_GSO_TYPE_TCPV4, 0, 0)
        f.send(pkt, flags=N.NETTXF_csum_blank | N.NETTXF_data_validated, rid=1, extras=[gso])
        assert f.tx_responses(2) == [(1, 0), (0, N.NETIF_RSP_NULL)]
        vnet, data = f.host_recv()
        assert data == pkt
        # (hdr_len is the host kernel's own on this side: its linear header length)
        assert (vnet[0], vnet[1], vnet[3]) == (T.VIRTIO_NET_HDR_F_NEEDS_CSUM,
                                              T.VIRTIO_NET_HDR_GSO_TCPV4, 1448)
        # GSO without a partial checksum is refused
        f.send(pkt, flags=0, rid=5, extras=[gso])
        assert f.tx_responses(2) == [(5, N.NETIF_RSP_ERROR), (0, N.NETIF_RSP_NULL)]
    finally:
        f.close()
