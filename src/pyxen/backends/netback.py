"""netback: the backend half of Xen's PV network device (xen/io/netif.h), in the VMM.

Each vif has one TAP device (backends/tap.py) and 1..N queues; each queue is a TX ring
(the guest's sends), an RX ring (buffers the guest posts for what it receives), one event
channel (or one per ring: feature-split-event-channels) and one TAP fd, served by its own
thread that sleeps in poll() on the event channel fds, the TAP fd and a credit timer.

Data moves by grant copy only (feature-rx-copy; no page flipping, no mapping of data
pages), as Linux's netback does: TX slots are copied out of the guest's granted pages
with GrantTable.copy_from and written to the TAP with one writev; a frame read from the
TAP is copied into the pages of as many RX requests as it needs (feature-sg), after a
GSO extra-info slot when it is a TCP segment (feature-gso-tcpv4/-tcpv6). Checksum
offload maps netif's csum_blank / data_validated onto the virtio_net_hdr the TAP speaks.

The frontend is hostile. Every index and request is read once from the shared page and
checked before use: a producer index more than a ring ahead of the consumer, a packet
whose slots are not all posted, a slot crossing its page, too many slots, an unknown
extra-info type or a zero GSO size are fatal for that queue (logged once; the queue
stops, as Linux's xenvif_fatal_tx_err does; the VMM and the other queues carry on). A bad
grant, a packet too short for an Ethernet header or a frame/slot size mismatch only
gets NETIF_RSP_ERROR for that packet. A frontend that never consumes responses only
stops getting packets (the TAP's queue drops them in the host kernel).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..hypervisor import atomic
from ..hypervisor.event_channel import ECS_INTERDOMAIN, BackendPort
from ..hypervisor.grant_table import GrantError, GrantMapping, GrantTable
from ..hypervisor.public import netif as N
from . import tap as T
from .xenbus_backend import DeviceError, XenbusDevice

PAGE_SIZE = 4096
ETH_HLEN = 14
RING_HEADER = N.netif_tx_sring.ring.offset  # 64
TX_REQ = struct.Struct("<IHHHH")  # gref offset flags id size
TX_RSP = struct.Struct("<Hh")  # id status
RX_REQ = struct.Struct("<HHI")  # id pad gref
RX_RSP = struct.Struct("<HHHh")  # id offset flags status
EXTRA = struct.Struct("<BBHBBH")  # type flags | gso: size type pad features
MCAST = struct.Struct("<BB6s")  # type flags | mcast addr
TX_SLOT = ctypes.sizeof(N.netif_tx_sring_entry)
RX_SLOT = ctypes.sizeof(N.netif_rx_sring_entry)
assert TX_REQ.size == ctypes.sizeof(N.netif_tx_request) and TX_SLOT == 12
assert RX_REQ.size == ctypes.sizeof(N.netif_rx_request) == RX_RSP.size == RX_SLOT
assert EXTRA.size == ctypes.sizeof(N.netif_extra_info)

# Linux netback: more slots than this is a malicious frontend; more than the legacy
# maximum (XEN_NETBK_LEGACY_SLOTS_MAX = XEN_NETIF_NR_SLOTS_MIN) is dropped.
MAX_SLOTS = N.XEN_NETIF_NR_SLOTS_MIN
FATAL_SLOTS = 20
MAX_EXTRAS = N.XEN_NETIF_EXTRA_TYPE_MAX - 1
RX_FRAME_MAX = 65536 + 256
TX_BATCH = 64  # packets per pass before the thread looks at its other fds

_fence_byte = ctypes.c_uint8(0)
_FENCE = ctypes.addressof(_fence_byte)


def mb() -> None:
    """A full barrier (x86 `lock or`): stores before it are seen before loads after it."""
    atomic.fetch_or8(_FENCE, 0)


class RingError(Exception):
    """The frontend broke the ring protocol: fatal for the queue."""


class Ring:
    """One side's view of a shared ring (xen/io/ring.h) in a mapped granted page, as the
    backend drives it: consumes requests, produces responses."""

    def __init__(self, buf: memoryview, slot: int, name: str) -> None:
        self.buf = buf
        self.slot = slot
        self.name = name
        self.size = N.ring_size(PAGE_SIZE, N.netif_tx_sring_entry if slot == TX_SLOT
                                else N.netif_rx_sring_entry)
        self.mask = self.size - 1
        # req_prod, req_event, rsp_prod, rsp_event: aligned 32-bit loads and stores
        self.idx = (ctypes.c_uint32 * 4).from_buffer(buf)
        self.req_cons = self.idx[0]
        self.rsp_prod_pvt = self.idx[2]

    def release(self) -> None:
        """Drop the ctypes view so the grant mapping can be released."""
        del self.idx

    def off(self, i: int) -> int:
        return RING_HEADER + (i & self.mask) * self.slot

    def unconsumed(self) -> int:
        """Requests posted and not consumed; RingError if the producer is impossible."""
        n = (self.idx[0] - self.req_cons) & 0xFFFFFFFF
        if n > self.size:
            raise RingError(f"{self.name}: impossible number of requests "
                            f"(req_prod {self.idx[0]}, req_cons {self.req_cons})")
        if (self.req_cons - self.rsp_prod_pvt) & 0xFFFFFFFF >= self.size and n:
            raise RingError(f"{self.name}: request consumer overflow")
        return n

    def push_responses(self) -> bool:
        """RING_PUSH_RESPONSES_AND_CHECK_NOTIFY."""
        old = self.idx[2]
        new = self.rsp_prod_pvt & 0xFFFFFFFF
        if old == new:
            return False
        self.idx[2] = new
        mb()
        return ((new - self.idx[3]) & 0xFFFFFFFF) < ((new - old) & 0xFFFFFFFF)

    def final_check(self) -> int:
        """RING_FINAL_CHECK_FOR_REQUESTS: ask for a kick, then look once more."""
        n = self.unconsumed()
        if n:
            return n
        self.idx[1] = (self.req_cons + 1) & 0xFFFFFFFF
        mb()
        return self.unconsumed()

    def want_kick_after(self, needed: int) -> None:
        """Ask the frontend to kick once `needed` more requests are posted."""
        self.idx[1] = (self.req_cons + max(1, needed)) & 0xFFFFFFFF
        mb()


@dataclass
class Features:
    """What the frontend asked for (its xenstore nodes), limited to what we offer."""

    sg: bool = False
    gso_tcpv4: bool = False
    gso_tcpv6: bool = False
    rx_csum: bool = True  # the frontend takes partial checksums (no feature-no-csum-offload)
    ipv6_csum: bool = False
    multicast_control: bool = False


@dataclass
class RateLimit:
    """xl's rate=: `bytes_per_interval` every `interval_us` of TX credit (Linux netback's
    credit scheduler: a packet larger than one interval's credit still passes alone)."""

    bytes_per_interval: int
    interval_us: int
    remaining: int = 0
    window_start: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.remaining = self.bytes_per_interval

    def wait_for(self, size: int) -> float:
        """0 if `size` bytes may go now (and takes them), else seconds until they may."""
        now = time.monotonic()
        interval = self.interval_us / 1e6
        if now >= self.window_start + interval:
            self.window_start = now
            self.remaining = min(self.remaining + self.bytes_per_interval,
                                 max(self.bytes_per_interval, size))
        if size > self.remaining and self.remaining < max(self.bytes_per_interval, size):
            return max(self.window_start + interval - now, 1e-4)
        self.remaining = max(0, self.remaining - size)
        return 0.0


@dataclass
class Stats:
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0


class NetQueue:
    """One queue of a vif: its two rings, its event channel(s), its TAP fd, its thread."""

    def __init__(self, vif: Vif, index: int, tx_map: GrantMapping, rx_map: GrantMapping,
                 tx_port: BackendPort, rx_port: BackendPort | None, tap_fd: int) -> None:
        self.vif = vif
        self.index = index
        self.gnttab = vif.gnttab
        self.domid = vif.backend_domid
        self.tx_map, self.rx_map = tx_map, rx_map
        self.tx = Ring(tx_map.buf, TX_SLOT, f"vif{vif.name} q{index} tx")
        self.rx = Ring(rx_map.buf, RX_SLOT, f"vif{vif.name} q{index} rx")
        self.tx_port = tx_port
        self.rx_port = rx_port  # None: one channel for both rings
        self.tap_fd = tap_fd
        self.broken: str | None = None
        self.pending_rx: tuple[bytes, bytes] | None = None  # (vnet header, frame)
        self.tx_wait_until = 0.0
        self.stats = Stats()
        self._hdr = bytearray(T.VNET_HDR.size)
        self._frame = bytearray(RX_FRAME_MAX)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"netback-{vif.name}-q{index}")

    def start(self) -> None:
        self.thread.start()
        self.tx_port.notify()  # as Linux: a kick once connected, in case requests wait

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        _set_thread_name(f"netback{self.vif.name}q{self.index}")
        poller = select.poll()
        ports = [self.tx_port] + ([self.rx_port] if self.rx_port is not None else [])
        for p in ports:
            poller.register(p.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        tap_registered = False
        try:
            while True:
                want_tap = self.broken is None and self.pending_rx is None
                if want_tap != tap_registered:
                    if want_tap:
                        poller.register(self.tap_fd, select.POLLIN)
                    else:
                        poller.unregister(self.tap_fd)
                    tap_registered = want_tap
                timeout = None
                if self.tx_wait_until:
                    timeout = max(0, int((self.tx_wait_until - time.monotonic()) * 1000) + 1)
                events = poller.poll(timeout)
                if any(fd == self._stop_r for fd, _ in events):
                    return
                for p in ports:
                    p.consume()
                if any(p.state != ECS_INTERDOMAIN for p in ports):
                    self.vif.report(f"{self.tx.name[:-3]}: the frontend closed its event "
                                    "channel; queue stopped")
                    return
                if self.broken is not None:
                    continue
                try:
                    self._service()
                except RingError as e:
                    self._fatal(str(e))
        except Exception as e:  # noqa: BLE001 - a backend bug must not take the VMM down
            self.vif.report(f"netback {self.vif.name} q{self.index}: internal error: "
                            f"{type(e).__name__}: {e}")

    def _service(self) -> None:
        """Both directions until neither has work it can do now."""
        while True:
            busy = False
            if not self.tx_wait_until or time.monotonic() >= self.tx_wait_until:
                self.tx_wait_until = 0.0
                busy |= self.process_tx()
            busy |= self.process_rx()
            if not busy:
                return

    def _fatal(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            self.vif.report(f"netback: {why}: fatal error; queue disabled")

    def _notify_tx(self) -> None:
        self.tx_port.notify()

    def _notify_rx(self) -> None:
        (self.rx_port or self.tx_port).notify()

    # --- TX: the guest's packets out to the TAP -------------------------------------------

    def process_tx(self) -> bool:
        """Consume up to TX_BATCH packets; True if there may be more to do."""
        ring = self.tx
        done = 0
        while done < TX_BATCH:
            if not ring.unconsumed() and not ring.final_check():
                break
            if not self._tx_one():
                break
            done += 1
        if ring.push_responses():
            self._notify_tx()
        return done == TX_BATCH

    def _tx_one(self) -> bool:
        """One packet (all its slots); False when it must wait for credit."""
        ring = self.tx
        buf = ring.buf
        avail = ring.unconsumed()
        i = ring.req_cons
        first = TX_REQ.unpack_from(buf, ring.off(i))
        gref, offset, flags, rid, size = first
        rate = self.vif.rate
        if rate is not None:
            wait = rate.wait_for(size)
            if wait:
                self.tx_wait_until = time.monotonic() + wait
                return False
        n = 1
        extras: list[tuple[int, int]] = []  # (slot id, type) for responses
        gso: tuple[int, int] | None = None  # (size, type)
        mcast: list[tuple[int, bytes]] = []
        if flags & N.NETTXF_extra_info:
            while True:
                if n >= avail:
                    raise RingError(f"{ring.name}: missing extra info")
                if len(extras) >= MAX_EXTRAS:
                    raise RingError(f"{ring.name}: too many extra info slots")
                etype, eflags, gsize, gtype, _, _ = EXTRA.unpack_from(buf, ring.off(i + n))
                if not N.XEN_NETIF_EXTRA_TYPE_NONE < etype < N.XEN_NETIF_EXTRA_TYPE_MAX:
                    raise RingError(f"{ring.name}: bad extra info type {etype}")
                if etype == N.XEN_NETIF_EXTRA_TYPE_GSO:
                    if gsize == 0:
                        raise RingError(f"{ring.name}: GSO size must not be zero")
                    gso = (gsize, gtype)
                elif etype in (N.XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
                               N.XEN_NETIF_EXTRA_TYPE_MCAST_DEL):
                    mcast.append((etype, MCAST.unpack_from(buf, ring.off(i + n))[2]))
                extras.append((i + n, etype))
                n += 1
                if not eflags & N.XEN_NETIF_EXTRA_FLAG_MORE:
                    break
        slots = [first]
        more = flags & N.NETTXF_more_data
        while more:
            if n >= avail:
                raise RingError(f"{ring.name}: packet's slots are not all posted "
                                f"({len(slots)} so far)")
            if len(slots) >= FATAL_SLOTS:
                raise RingError(f"{ring.name}: too many slots ({len(slots) + 1})")
            req = TX_REQ.unpack_from(buf, ring.off(i + n))
            slots.append(req)
            more = req[2] & N.NETTXF_more_data
            n += 1
        for s in slots:
            if s[1] + (s[4] if s is not first else 0) > PAGE_SIZE:
                raise RingError(f"{ring.name}: slot crosses a page boundary "
                                f"(offset {s[1]}, size {s[4]})")
        ring.req_cons = (i + n) & 0xFFFFFFFF

        for kind, addr in mcast:
            self.vif.multicast(kind, addr)
        status = self._tx_send(slots, flags, gso)
        # responses in request order: the first slot, its extra-info slots (NULL), the rest
        self._tx_respond(first[3], status)
        for _ in extras:
            self._tx_respond(0, N.NETIF_RSP_NULL)
        for s in slots[1:]:
            self._tx_respond(s[3], status)
        return True

    def _tx_respond(self, rid: int, status: int) -> None:
        ring = self.tx
        TX_RSP.pack_into(ring.buf, ring.off(ring.rsp_prod_pvt), rid, status)
        ring.rsp_prod_pvt = (ring.rsp_prod_pvt + 1) & 0xFFFFFFFF

    def _tx_send(self, slots: list[tuple[int, int, int, int, int]], flags: int,
                 gso: tuple[int, int] | None) -> int:
        """Copy the packet out of the guest and write it to the TAP: its status."""
        total = slots[0][4]
        rest = sum(s[4] for s in slots[1:])
        if total < ETH_HLEN or rest > total or len(slots) > MAX_SLOTS:
            self.stats.tx_errors += 1
            return N.NETIF_RSP_ERROR
        if slots[0][1] + total - rest > PAGE_SIZE:
            self.stats.tx_errors += 1
            return N.NETIF_RSP_ERROR
        pieces = []
        try:
            for k, (gref, offset, _, _, size) in enumerate(slots):
                length = total - rest if k == 0 else size
                if length:
                    pieces.append(self.gnttab.copy_from(gref, offset, length,
                                                        domid=self.domid))
        except GrantError:
            self.stats.tx_errors += 1
            return N.NETIF_RSP_ERROR
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        hdr = _tx_vnet_header(data, flags, gso)
        if hdr is None:
            self.stats.tx_errors += 1
            return N.NETIF_RSP_ERROR
        try:
            os.writev(self.tap_fd, [hdr, data])
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EIO, errno.EINVAL, errno.ENOBUFS):
                raise
            self.stats.tx_errors += 1
            return N.NETIF_RSP_DROPPED if e.errno == errno.EAGAIN else N.NETIF_RSP_ERROR
        self.stats.tx_packets += 1
        self.stats.tx_bytes += len(data)
        return N.NETIF_RSP_OKAY

    # --- RX: frames from the TAP into the guest's posted buffers ------------------------

    def process_rx(self) -> bool:
        """Deliver frames while the guest has buffers; True if there may be more."""
        ring = self.rx
        delivered = 0
        while delivered < TX_BATCH:
            if self.pending_rx is None and not self._read_tap():
                break
            assert self.pending_rx is not None
            hdr, frame = self.pending_rx
            need = self._rx_slots(hdr, frame)
            if need is None:  # undeliverable to this frontend: dropped
                self.pending_rx = None
                continue
            if ring.unconsumed() < need:
                ring.want_kick_after(need)
                if ring.unconsumed() < need:
                    break
            self._rx_deliver(hdr, frame)
            self.pending_rx = None
            delivered += 1
        if ring.push_responses():
            self._notify_rx()
        return delivered == TX_BATCH

    def _read_tap(self) -> bool:
        try:
            n = os.readv(self.tap_fd, [self._hdr, self._frame])
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EBADF, errno.EBADFD, errno.EIO):
                return False
            raise
        if n <= T.VNET_HDR.size:
            return False
        frame = bytes(memoryview(self._frame)[:n - T.VNET_HDR.size])
        self.pending_rx = (bytes(self._hdr), frame)
        return True

    def _rx_slots(self, hdr: bytes, frame: bytes) -> int | None:
        feats = self.vif.features
        vflags, gso_type, _, gso_size, cstart, coff = T.VNET_HDR.unpack(hdr)
        if not self.vif.accepts(frame):
            self.stats.rx_dropped += 1
            return None
        if gso_type != T.VIRTIO_NET_HDR_GSO_NONE and not (feats.sg and gso_size):
            self.stats.rx_dropped += 1
            return None
        n = max(1, -(-len(frame) // PAGE_SIZE))
        if n > 1 and not feats.sg:
            self.stats.rx_dropped += 1
            return None
        if n > MAX_SLOTS:
            self.stats.rx_dropped += 1
            return None
        return n + (1 if gso_type != T.VIRTIO_NET_HDR_GSO_NONE else 0)

    def _rx_deliver(self, hdr: bytes, frame: bytes) -> None:
        ring = self.rx
        buf = ring.buf
        vflags, gso_type, _, gso_size, cstart, coff = T.VNET_HDR.unpack(hdr)
        rflags = 0
        if vflags & T.VIRTIO_NET_HDR_F_NEEDS_CSUM:
            if _is_ipv6(frame) and not self.vif.features.ipv6_csum:
                frame = _complete_csum(frame, cstart, coff)
                rflags = N.NETRXF_data_validated
            else:
                rflags = N.NETRXF_csum_blank | N.NETRXF_data_validated
        elif vflags & T.VIRTIO_NET_HDR_F_DATA_VALID:
            rflags = N.NETRXF_data_validated
        chunks = [frame[k:k + PAGE_SIZE] for k in range(0, max(len(frame), 1), PAGE_SIZE)]
        error = False
        for k, chunk in enumerate(chunks):
            rid, _, gref = RX_REQ.unpack_from(buf, ring.off(ring.req_cons))
            ring.req_cons = (ring.req_cons + 1) & 0xFFFFFFFF
            status = len(chunk)
            try:
                self.gnttab.copy_to(gref, 0, chunk, domid=self.domid)
            except GrantError:
                status = N.NETIF_RSP_ERROR
                error = True
            f = rflags if k == 0 else 0
            if k + 1 < len(chunks):
                f |= N.NETRXF_more_data
            if k == 0 and gso_type != T.VIRTIO_NET_HDR_GSO_NONE:
                f |= N.NETRXF_extra_info
            RX_RSP.pack_into(buf, ring.off(ring.rsp_prod_pvt), rid, 0, f, status)
            ring.rsp_prod_pvt = (ring.rsp_prod_pvt + 1) & 0xFFFFFFFF
            if k == 0 and gso_type != T.VIRTIO_NET_HDR_GSO_NONE:
                ring.req_cons = (ring.req_cons + 1) & 0xFFFFFFFF  # its buffer is unused
                xtype = (N.XEN_NETIF_GSO_TYPE_TCPV6 if gso_type == T.VIRTIO_NET_HDR_GSO_TCPV6
                         else N.XEN_NETIF_GSO_TYPE_TCPV4)
                EXTRA.pack_into(buf, ring.off(ring.rsp_prod_pvt), N.XEN_NETIF_EXTRA_TYPE_GSO,
                                0, gso_size, xtype, 0, 0)
                ring.rsp_prod_pvt = (ring.rsp_prod_pvt + 1) & 0xFFFFFFFF
        if error:
            self.stats.rx_errors += 1
        else:
            self.stats.rx_packets += 1
            self.stats.rx_bytes += len(frame)

    # --- teardown ------------------------------------------------------------------------

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(5)

    def close(self) -> None:
        """After stop(): unmap the rings, close the channels (the guest sees them go)."""
        self.stop()
        for ring in (self.tx, self.rx):
            with contextlib.suppress(AttributeError):
                ring.release()
        for m in (self.tx_map, self.rx_map):
            with contextlib.suppress(GrantError):
                self.gnttab.unmap(m)
        for p in (self.tx_port, self.rx_port):
            if p is not None:
                p.close()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _set_thread_name(name: str) -> None:
    """The OS thread's name (/proc/PID/task/TID/comm), so its CPU time can be told apart
    from the vCPUs' (bench/net.py reads it)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


# --- checksum and GSO: netif flags <-> virtio_net_hdr --------------------------------------


def _l4(frame: bytes) -> tuple[int, int] | None:
    """(offset of the L4 header, IP protocol) of an IPv4/IPv6 frame; None if neither or
    an IPv4 fragment (whose checksum cannot be completed on its own)."""
    if len(frame) < ETH_HLEN + 20:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0800:
        ihl = (frame[ETH_HLEN] & 0x0F) * 4
        frag = int.from_bytes(frame[ETH_HLEN + 6:ETH_HLEN + 8], "big")
        if ihl < 20 or frag & 0x3FFF:
            return None
        return ETH_HLEN + ihl, frame[ETH_HLEN + 9]
    if ethertype == 0x86DD and len(frame) >= ETH_HLEN + 40:
        return ETH_HLEN + 40, frame[ETH_HLEN + 6]
    return None


def _is_ipv6(frame: bytes) -> bool:
    return len(frame) >= ETH_HLEN and frame[12:14] == b"\x86\xdd"


CSUM_OFFSET = {6: 16, 17: 6}  # TCP, UDP


def _tx_vnet_header(data: bytes, flags: int, gso: tuple[int, int] | None) -> bytes | None:
    """The virtio_net_hdr for a guest packet; None if its offload request is unusable."""
    vflags = gso_type = hdr_len = gso_size = cstart = coff = 0
    if flags & N.NETTXF_csum_blank:
        l4 = _l4(data)
        if l4 is None or l4[1] not in CSUM_OFFSET:
            return None
        cstart, coff = l4[0], CSUM_OFFSET[l4[1]]
        if cstart + coff + 2 > len(data):
            return None
        vflags = T.VIRTIO_NET_HDR_F_NEEDS_CSUM
    elif flags & N.NETTXF_data_validated:
        vflags = T.VIRTIO_NET_HDR_F_DATA_VALID
    if gso is not None:
        size, kind = gso
        if kind not in (N.XEN_NETIF_GSO_TYPE_TCPV4, N.XEN_NETIF_GSO_TYPE_TCPV6):
            return None
        if not vflags & T.VIRTIO_NET_HDR_F_NEEDS_CSUM or coff != 16:
            return None  # GSO needs a partial TCP checksum
        if cstart + 13 >= len(data):
            return None
        hdr_len = cstart + (data[cstart + 12] >> 4) * 4
        gso_size = size
        gso_type = (T.VIRTIO_NET_HDR_GSO_TCPV4 if kind == N.XEN_NETIF_GSO_TYPE_TCPV4
                    else T.VIRTIO_NET_HDR_GSO_TCPV6)
    return T.VNET_HDR.pack(vflags, gso_type, hdr_len, gso_size, cstart, coff)


def _complete_csum(frame: bytes, start: int, offset: int) -> bytes:
    """Fill in a partial checksum (the field holds the pseudo-header sum)."""
    if start + offset + 2 > len(frame):
        return frame
    data = frame[start:]
    if len(data) % 2:
        data += b"\0"
    s = sum(memoryview(data).cast("H"))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    csum = (~s) & 0xFFFF
    out = bytearray(frame)
    out[start + offset:start + offset + 2] = csum.to_bytes(2, "little")
    return bytes(out)


# --- the vif ------------------------------------------------------------------------------


class Vif:
    """One vif's data path: the TAP device and the queues once the frontend connects."""

    def __init__(self, gnttab: GrantTable, name: str, ifname: str, *, max_queues: int = 1,
                 rate: RateLimit | None = None, backend_domid: int = 0,
                 report: Callable[[str], None] = lambda s: None) -> None:
        self.gnttab = gnttab
        self.name = name  # "DOMID.DEVID"
        self.ifname = ifname
        self.max_queues = max_queues
        self.rate = rate
        self.backend_domid = backend_domid
        self.report = report
        self.features = Features()
        self.queues: list[NetQueue] = []
        self.mcast: set[bytes] = set()
        self.fds = [T.open_tap(ifname, multi_queue=max_queues > 1)]

    def connect(self, features: Features,
                rings: list[tuple[GrantMapping, GrantMapping, BackendPort,
                                  BackendPort | None]]) -> None:
        """Start one queue per (tx ring, rx ring, channel, rx channel) the frontend gave."""
        self.features = features
        while len(self.fds) < len(rings):
            self.fds.append(T.add_queue(self.ifname))
        for fd in self.fds:
            T.set_offload(fd, features.rx_csum, features.gso_tcpv4 and features.sg,
                          features.gso_tcpv6 and features.sg)
        for k, (tx, rx, txp, rxp) in enumerate(rings):
            self.queues.append(NetQueue(self, k, tx, rx, txp, rxp, self.fds[k]))
        for q in self.queues:
            q.start()

    def multicast(self, kind: int, addr: bytes) -> None:
        if kind == N.XEN_NETIF_EXTRA_TYPE_MCAST_ADD:
            if len(self.mcast) < 64:  # Linux's XEN_NETBK_MCAST_MAX
                self.mcast.add(addr)
        else:
            self.mcast.discard(addr)

    def accepts(self, frame: bytes) -> bool:
        """feature-multicast-control: multicast frames only for subscribed groups."""
        if not self.features.multicast_control or not frame[0] & 1:
            return True
        return frame[:6] == b"\xff" * 6 or frame[:6] in self.mcast

    def stats(self) -> Stats:
        total = Stats()
        for q in self.queues:
            for k in vars(total):
                setattr(total, k, getattr(total, k) + getattr(q.stats, k))
        return total

    def disconnect(self) -> None:
        """The frontend is closing: stop the queues, unmap, close channels; TAP stays."""
        for q in self.queues:
            q.close()
        self.queues = []

    def close(self) -> None:
        """The vif goes: disconnect, then the TAP device disappears with its last fd."""
        self.disconnect()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


# --- the xenbus device (backends/xenbus_backend.py drives the handshake) ------------------

MAX_QUEUES = max(1, min(os.cpu_count() or 1, 8))  # Linux: xenvif_max_queues = online CPUs

BACKEND_FEATURES = {
    "feature-sg": 1, "feature-gso-tcpv4": 1, "feature-gso-tcpv6": 1,
    "feature-ipv6-csum-offload": 1, "feature-rx-copy": 1, "feature-rx-flip": 0,
    "feature-multicast-control": 1, "feature-dynamic-multicast-control": 1,
    "feature-split-event-channels": 1, "multi-queue-max-queues": MAX_QUEUES,
}


class Netback(XenbusDevice):
    """A vif as Linux's xen-netback presents it in xenstore: features and InitWait once
    its host interface exists; the rings and channels of every queue on connect."""

    kind = "vif"

    def __init__(self, bus, devid: int) -> None:  # noqa: ANN001 - XenbusBackendBus
        super().__init__(bus, devid)
        self.vif: Vif | None = None

    def probe(self) -> None:
        ifname = self.read("vifname") or f"vif{self.domid}.{self.devid}"
        rate = None
        text = self.read("rate")
        if text:
            try:
                nbytes, usecs = (int(x) for x in text.split(","))
                if nbytes > 0 and usecs > 0:
                    rate = RateLimit(nbytes, usecs)
            except ValueError:
                raise DeviceError(f"bad rate node {text!r}") from None
        if self.vif is None:
            try:
                self.vif = Vif(self.bus.gnttab, f"{self.domid}.{self.devid}", ifname,
                               max_queues=MAX_QUEUES, rate=rate,
                               backend_domid=self.bus.dom0.domid, report=self.log)
            except T.HostNetError as e:
                raise DeviceError(str(e)) from None
            self.log(f"host interface {ifname} created")
        self.write_nodes(BACKEND_FEATURES)

    def connect(self) -> None:
        assert self.vif is not None
        rf = self.read_frontend_int
        if rf("request-rx-copy", 0) != 1:
            raise DeviceError("frontend does not support rx-copy")
        if rf("feature-rx-notify", 0) != 1:
            raise DeviceError("feature-rx-notify is mandatory")
        nq = rf("multi-queue-num-queues", 1) or 1
        if not 1 <= nq <= MAX_QUEUES:
            raise DeviceError(f"guest requested {nq} queues, exceeding the maximum of "
                              f"{MAX_QUEUES}")
        feats = Features(
            sg=rf("feature-sg", 0) == 1, gso_tcpv4=rf("feature-gso-tcpv4", 0) == 1,
            gso_tcpv6=rf("feature-gso-tcpv6", 0) == 1,
            rx_csum=rf("feature-no-csum-offload", 0) != 1,
            ipv6_csum=rf("feature-ipv6-csum-offload", 0) == 1,
            multicast_control=rf("request-multicast-control", 0) == 1)
        rings = []
        try:
            for q in range(nq):
                rings.append(self._queue(q if nq > 1 else None))
            self.vif.connect(feats, rings)
        except BaseException:
            for tx, rx, txp, rxp in rings:
                for m in (tx, rx):
                    self.unmap(m)
                for p in (txp, rxp):
                    if p is not None:
                        p.close()
            raise
        self.log(f"connected: {nq} queue(s), sg {int(feats.sg)}, gso "
                 f"{int(feats.gso_tcpv4)}/{int(feats.gso_tcpv6)}, rx csum offload "
                 f"{int(feats.rx_csum)}")

    def _queue(self, q: int | None) -> tuple[GrantMapping, GrantMapping, BackendPort,
                                             BackendPort | None]:
        prefix = f"queue-{q}/" if q is not None else ""
        rf = self.read_frontend_int
        tx_ref, rx_ref = rf(prefix + "tx-ring-ref"), rf(prefix + "rx-ring-ref")
        if tx_ref is None or rx_ref is None:
            raise DeviceError(f"reading {prefix}tx-ring-ref and {prefix}rx-ring-ref")
        ev, ev_tx, ev_rx = (rf(prefix + n) for n in ("event-channel", "event-channel-tx",
                                                     "event-channel-rx"))
        if ev is None and (ev_tx is None or ev_rx is None):
            raise DeviceError(f"reading {prefix}event-channel(-tx/-rx)")
        maps: list[GrantMapping] = []
        ports: list[BackendPort] = []
        try:
            for ref in (tx_ref, rx_ref):
                maps.append(self.map(ref))
            for p in ((ev,) if ev is not None else (ev_tx, ev_rx)):
                ports.append(self.bind(p))
        except (GrantError, Exception) as e:
            for m in maps:
                self.unmap(m)
            for p in ports:
                p.close()
            raise DeviceError(f"mapping shared-frames {tx_ref}/{rx_ref} port "
                              f"{ev if ev is not None else (ev_tx, ev_rx)}: {e}") from None
        return maps[0], maps[1], ports[0], (ports[1] if len(ports) > 1 else None)

    def disconnect(self) -> None:
        if self.vif is not None:
            self.vif.disconnect()

    def _disconnect(self) -> None:
        """Also called by the bus when the backend directory is gone (the device was
        removed, after the hotplug step's offline): then the host interface goes."""
        super()._disconnect()
        if self.vif is not None and self.read("state") is None:
            self.vif.close()
            self.log(f"host interface {self.vif.ifname} removed")
            self.vif = None
