"""A netfront written in Python for the netback tests: it drives the real netback
(backends/netback.py) through real guest memory (a memfd), a real grant table and real
event channels, and the host end is a real TAP device read and written through an
AF_PACKET socket with PACKET_VNET_HDR (so the test sees the virtio_net_hdr the backend
wrote). It posts exactly what a hostile frontend could post, byte for byte."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass

from pyxen.backends import netback as NB
from pyxen.backends import tap as T
from pyxen.hypervisor.domain import Domain
from pyxen.hypervisor.event_channel import BackendEventChannels, EvtchnHost, GuestEventChannels
from pyxen.hypervisor.grant_table import GrantTable
from pyxen.hypervisor.memory import GuestMemory
from pyxen.hypervisor.public import grant_table as G
from pyxen.hypervisor.public import netif as N

DOMID = 7
PAGE = 4096
SOL_PACKET, PACKET_VNET_HDR = 263, 15
ETH_P_ALL = 0x0003
TEST_ETHERTYPE = b"\x88\xb5"  # IEEE local experimental: never the host's own traffic


def ifname(tag: str) -> str:
    """Names unique to this task and process (IFNAMSIZ: 15 characters)."""
    return f"pxn{os.getpid() % 100000}{tag}"[:15]


@dataclass
class Queue:
    tx_gfn: int
    rx_gfn: int
    tx_ref: int
    rx_ref: int
    port: int
    tx_prod: int = 0
    tx_rsp_cons: int = 0
    rx_prod: int = 0
    rx_rsp_cons: int = 0


class Guest:
    """Guest memory, grant table, event channels; grants pages to dom0 like netfront."""

    def __init__(self) -> None:
        self.dom = Domain(domid=DOMID, name="netfront", memory=GuestMemory(8 << 20),
                          max_vcpus=1, max_memory=8 << 20)
        self.host = EvtchnHost()
        self.ev = GuestEventChannels(self.host, self.dom, inject=lambda v, vec: None)
        self.dom0 = BackendEventChannels(self.host)
        self.gt = GrantTable(self.dom)
        self.mem = self.dom.memory
        self.next_ref = 8
        self.next_gfn = 0x100

    def grant(self, gfn: int | None = None, readonly: bool = False) -> tuple[int, int]:
        gfn = self.next_gfn if gfn is None else gfn
        self.next_gfn = max(self.next_gfn, gfn + 1)
        ref = self.next_ref
        self.next_ref += 1
        e = self.gt.read_entry(ref)
        e.domid, e.frame = 0, gfn
        e.flags = G.GTF_permit_access | (G.GTF_readonly if readonly else 0)
        return ref, gfn


class Front:
    """The frontend of one vif with `nq` queues connected to a real netback Vif."""

    def __init__(self, guest: Guest, tag: str, *, nq: int = 1, features: NB.Features | None = None,
                 rate: NB.RateLimit | None = None, mtu: int | None = None) -> None:
        self.g = guest
        self.reports: list[str] = []
        self.name = ifname(tag)
        self.vif = NB.Vif(guest.gt, f"{DOMID}.0", self.name, max_queues=max(nq, 1), rate=rate,
                          report=self.reports.append)
        _quiet_and_up(self.name, mtu)
        self.queues: list[Queue] = []
        self.rx_pages: dict[int, int] = {}
        rings = []
        for _ in range(nq):
            tx_ref, tx_gfn = guest.grant()
            rx_ref, rx_gfn = guest.grant()
            for gfn in (tx_gfn, rx_gfn):  # SHARED_RING_INIT: indices 0, events 1
                guest.mem.write(gfn << 12, struct.pack("<IIII", 0, 1, 0, 1))
            port = guest.ev.alloc_unbound(0)
            q = Queue(tx_gfn, rx_gfn, tx_ref, rx_ref, port)
            self.queues.append(q)
            rings.append((guest.gt.map(tx_ref), guest.gt.map(rx_ref),
                          guest.dom0.connect(DOMID, port), None))
        self.vif.connect(features or NB.Features(), rings)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        self.sock.bind((self.name, 0))
        self.sock.settimeout(5)

    def close(self) -> None:
        self.sock.close()
        self.vif.close()

    # --- TX: the guest sends ------------------------------------------------------------

    def post_tx(self, slots: list[tuple[int, int, int, int, int]], q: int = 0,
                kick: bool = True) -> None:
        """Raw requests (gref, offset, flags, id, size) or extra-info slots (as 12 bytes)."""
        qu = self.queues[q]
        for s in slots:
            off = (qu.tx_gfn << 12) + 64 + (qu.tx_prod % N.NET_TX_RING_SIZE) * 12
            raw = s if isinstance(s, bytes) else NB.TX_REQ.pack(*s)
            self.g.mem.write(off, raw.ljust(12, b"\0"))
            qu.tx_prod += 1
        self.set_tx_prod(qu.tx_prod, q, kick)

    def set_tx_prod(self, value: int, q: int = 0, kick: bool = True) -> None:
        qu = self.queues[q]
        self.g.mem.write(qu.tx_gfn << 12, struct.pack("<I", value & 0xFFFFFFFF))
        if kick:
            self.g.ev.send(qu.port)

    def send(self, frame: bytes, flags: int = 0, q: int = 0, rid: int = 1,
             extras: list[bytes] = ()) -> None:  # type: ignore[assignment]
        """One frame from one freshly granted page per 4 KiB, SG beyond."""
        slots: list = []
        chunks = [frame[k:k + PAGE] for k in range(0, len(frame), PAGE)] or [b""]
        for k, chunk in enumerate(chunks):
            ref, gfn = self.g.grant(readonly=True)
            self.g.mem.write(gfn << 12, chunk)
            more = N.NETTXF_more_data if k + 1 < len(chunks) else 0
            f = (flags | (N.NETTXF_extra_info if extras else 0)) if k == 0 else 0
            slots.append((ref, 0, f | more, rid + k, len(frame) if k == 0 else len(chunk)))
            if k == 0:
                slots.extend(extras)
        self.post_tx(slots, q)

    def tx_responses(self, n: int, q: int = 0, timeout: float = 10) -> list[tuple[int, int]]:
        qu = self.queues[q]
        deadline = time.monotonic() + timeout
        while True:
            prod = struct.unpack("<I", self.g.mem.read((qu.tx_gfn << 12) + 8, 4))[0]
            if (prod - qu.tx_rsp_cons) & 0xFFFFFFFF >= n or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        out = []
        while qu.tx_rsp_cons != prod:
            off = (qu.tx_gfn << 12) + 64 + (qu.tx_rsp_cons % N.NET_TX_RING_SIZE) * 12
            out.append(NB.TX_RSP.unpack(self.g.mem.read(off, 4)))
            qu.tx_rsp_cons += 1
        return out

    def host_recv(self, timeout: float = 5) -> tuple[tuple[int, ...], bytes]:
        """Next frame the TAP took from the guest (ours only): (vnet header, frame)."""
        self.sock.settimeout(timeout)
        while True:
            data, addr = self.sock.recvfrom(70000)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            return T.VNET_HDR.unpack(data[:10]), data[10:]

    # --- RX: the guest receives ---------------------------------------------------------

    def post_rx(self, n: int, q: int = 0, kick: bool = True, readonly: bool = False) -> None:
        qu = self.queues[q]
        for _ in range(n):
            ref, gfn = self.g.grant(readonly=readonly)
            off = (qu.rx_gfn << 12) + 64 + (qu.rx_prod % N.NET_RX_RING_SIZE) * 8
            self.g.mem.write(off, NB.RX_REQ.pack(qu.rx_prod & 0xFFFF, 0, ref))
            self.rx_pages[(qu.rx_prod & 0xFFFF)] = gfn
            qu.rx_prod += 1
        self.g.mem.write((qu.rx_gfn << 12) + 0, struct.pack("<I", qu.rx_prod & 0xFFFFFFFF))
        if kick:
            self.g.ev.send(qu.port)

    def host_send(self, frame: bytes, vnet: tuple[int, ...] = (0, 0, 0, 0, 0, 0)) -> None:
        self.sock.send(T.VNET_HDR.pack(*vnet) + frame)

    def rx_responses(self, n: int, q: int = 0, timeout: float = 10) -> list[tuple[int, ...]]:
        """(id, offset, flags, status, data) per response; extra-info slots as raw bytes."""
        qu = self.queues[q]
        deadline = time.monotonic() + timeout
        while True:
            prod = struct.unpack("<I", self.g.mem.read((qu.rx_gfn << 12) + 8, 4))[0]
            if (prod - qu.rx_rsp_cons) & 0xFFFFFFFF >= n or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        out: list = []
        extra_next = False
        while qu.rx_rsp_cons != prod:
            off = (qu.rx_gfn << 12) + 64 + (qu.rx_rsp_cons % N.NET_RX_RING_SIZE) * 8
            raw = self.g.mem.read(off, 8)
            qu.rx_rsp_cons += 1
            if extra_next:
                out.append(raw)
                extra_next = False
                continue
            rid, offset, flags, status = NB.RX_RSP.unpack(raw)
            data = b""
            if status > 0 and rid in self.rx_pages:
                data = self.g.mem.read((self.rx_pages[rid] << 12) + offset, status)
            out.append((rid, offset, flags, status, data))
            extra_next = bool(flags & N.NETRXF_extra_info)
        return out


def _quiet_and_up(name: str, mtu: int | None) -> None:
    """No IPv6 chatter from the host on the test TAP; then bring it up."""
    with contextlib.suppress(OSError):
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        if mtu:
            ipr.link("set", index=idx, mtu=mtu)
        ipr.link("set", index=idx, state="up")


def frame(payload: bytes, dst: bytes = b"\x00\x16\x3e\x00\x00\x01",
          src: bytes = b"\x00\x16\x3e\x00\x00\x02") -> bytes:
    return dst + src + TEST_ETHERTYPE + payload
