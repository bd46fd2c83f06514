"""blkback: the block device backend (xen/io/blkif.h), one per ``vbd`` of the domain.

Like Linux's xen-blkback: at probe it offers feature-flush-cache, feature-barrier,
feature-discard (regular files), feature-persistent, feature-max-indirect-segments,
multi-queue-max-queues and max-ring-page-order; once the toolstack's hotplug step is done
and the frontend is Initialised it reads ``protocol`` (x86_64-abi or x86_32-abi),
``ring-page-order`` / ``ring-ref``/``ring-ref%u``, ``event-channel`` (or
``multi-queue-num-queues`` and ``queue-%u/...``), ``feature-persistent``; opens the
target (``physical-device-path`` or ``params``), writes sectors, sector-size (512),
physical-sector-size, info (VDISK_*), and serves each ring on its own thread, woken by
its event channel.

Every request is checked before any I/O: its operation, its segment count (1..11, or
1..feature-max-indirect-segments for BLKIF_OP_INDIRECT), each segment's sector range in
its page, the request's range against the disk, each grant (mapped only through the grant
table, read-only for writes). A bad one gets BLKIF_RSP_ERROR and nothing else happens; a
write to a read-only disk gets BLKIF_RSP_ERROR. A producer index more than a ring ahead
of what we consumed is a broken frontend: the ring is no longer served (Linux does the
same) until the frontend reconnects. I/O is one os.preadv/os.pwritev per request
straight into memoryviews of the granted pages (no copy in Python).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import stat
import struct
import threading
import time
from dataclasses import dataclass

from ..hypervisor import atomic
from ..hypervisor.event_channel import ECS_INTERDOMAIN, BackendPort
from ..hypervisor.grant_table import GrantError, GrantMapping
from ..hypervisor.public.io import blkif as B
from .xenbus_backend import DeviceError, XenbusDevice

PAGE = 4096
SECTOR = 512
SECTORS_PER_PAGE = PAGE // SECTOR
MAX_RING_PAGE_ORDER = 4  # Linux's xen_blkif_max_ring_order default
MAX_QUEUES = 4
MAX_INDIRECT_SEGMENTS = 256  # Linux's MAX_INDIRECT_SEGMENTS
SEGS_PER_INDIRECT_FRAME = PAGE // 8
MAX_PGRANTS = 1056  # persistent grants per ring (Linux's xen_blkif_max_pgrants)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


@dataclass(frozen=True)
class RingAbi:
    """One blkif protocol's layouts as struct formats (checked against the ctypes mirrors
    by tests/backends/test_blkif_abi.py)."""

    name: str
    entry: int  # sizeof(union blkif_sring_entry)
    req: struct.Struct  # operation nr_segments handle id sector_number
    seg_off: int
    discard: struct.Struct  # operation flag handle id sector_number nr_sectors
    indirect: struct.Struct  # operation indirect_op nr_segments id sector handle grefs[8]
    rsp: struct.Struct  # id operation status


SEG = struct.Struct("<IBBxx")
ABI_X86_64 = RingAbi("x86_64-abi", 112, struct.Struct("<BBHxxxxQQ"), 24,
                     struct.Struct("<BBHxxxxQQQ"), struct.Struct("<BBHxxxxQQHxx8I"),
                     struct.Struct("<QBxh4x"))
ABI_X86_32 = RingAbi("x86_32-abi", 108, struct.Struct("<BBHQQ"), 20,
                     struct.Struct("<BBHQQQ"), struct.Struct("<BBHQQHxx8I"),
                     struct.Struct("<QBxh"))
ABIS = {ABI_X86_64.name: ABI_X86_64, ABI_X86_32.name: ABI_X86_32}


def ring_size(nr_pages: int, abi: RingAbi) -> int:
    n = (nr_pages * PAGE - B.RING_HEADER_SIZE) // abi.entry
    return 1 << (n.bit_length() - 1)


class SharedRing:
    """The blkif shared ring over its granted pages (which need not be contiguous):
    header fields through a u32 view of page 0, entries read and written by offset."""

    def __init__(self, pages: list[memoryview], abi: RingAbi) -> None:
        self.pages = pages
        self.abi = abi
        self.size = ring_size(len(pages), abi)
        self.hdr = pages[0][:16].cast("I")  # req_prod req_event rsp_prod rsp_event

    def _span(self, idx: int, n: int) -> tuple[int, int]:
        off = B.RING_HEADER_SIZE + (idx & (self.size - 1)) * self.abi.entry
        return off, off + n

    def read_entry(self, idx: int) -> bytes:
        start, end = self._span(idx, self.abi.entry)
        p0, p1 = start // PAGE, (end - 1) // PAGE
        if p0 == p1:
            return bytes(self.pages[p0][start % PAGE:start % PAGE + self.abi.entry])
        cut = PAGE - start % PAGE
        return bytes(self.pages[p0][start % PAGE:]) + bytes(self.pages[p1][:self.abi.entry - cut])

    def write_response(self, idx: int, req_id: int, op: int, status: int) -> None:
        data = self.abi.rsp.pack(req_id, op, status)
        start, end = self._span(idx, len(data))
        p0, p1 = start // PAGE, (end - 1) // PAGE
        if p0 == p1:
            self.pages[p0][start % PAGE:start % PAGE + len(data)] = data
        else:
            cut = PAGE - start % PAGE
            self.pages[p0][start % PAGE:] = data[:cut]
            self.pages[p1][:len(data) - cut] = data[cut:]


@dataclass
class Request:
    op: int  # for BLKIF_OP_INDIRECT: the indirect_op (read or write)
    id: int
    sector: int
    segs: list[tuple[int, int, int]]  # (gref, first_sect, last_sect)
    nr_sectors: int = 0  # discard
    flag: int = 0  # discard flags
    indirect: tuple[int, tuple[int, ...]] | None = None  # (nr_segments, indirect grefs)


def parse_request(raw: bytes, abi: RingAbi) -> tuple[int, int, Request | None]:
    """(operation, id, request or None when malformed): the id is echoed even for a bad
    request, so the frontend can match the error to it."""
    op = raw[0]
    if op == B.BLKIF_OP_DISCARD:
        _, flag, _h, rid, sector, nr = abi.discard.unpack_from(raw)
        return op, rid, Request(op, rid, sector, [], nr_sectors=nr, flag=flag)
    if op == B.BLKIF_OP_INDIRECT:
        _, iop, nseg, rid, sector, _h, *grefs = abi.indirect.unpack_from(raw)
        if iop not in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE) or \
                not 1 <= nseg <= MAX_INDIRECT_SEGMENTS:
            return op, rid, None
        npages = -(-nseg // SEGS_PER_INDIRECT_FRAME)
        return op, rid, Request(iop, rid, sector, [],
                                indirect=(nseg, tuple(grefs[:npages])))
    _, nseg, _h, rid, sector = abi.req.unpack_from(raw)
    if nseg > B.BLKIF_MAX_SEGMENTS_PER_REQUEST:
        return op, rid, None
    segs = [SEG.unpack_from(raw, abi.seg_off + 8 * i)[:3] for i in range(nseg)]
    return op, rid, Request(op, rid, sector, segs)


class BlkifQueue:
    """One ring (a queue) of a vbd: its pages, its event channel, its thread."""

    def __init__(self, dev: Blkback, index: int, refs: list[int], port: int,
                 abi: RingAbi) -> None:
        self.dev = dev
        self.index = index
        self.abi = abi
        self.ring_maps: list[GrantMapping] = []
        self.pgrants: dict[int, GrantMapping] = {}
        self.port: BackendPort | None = None
        try:
            for ref in refs:
                self.ring_maps.append(dev.map(ref))
            self.ring = SharedRing([m.buf for m in self.ring_maps], abi)
            self.port = dev.bind(port)
        except GrantError as e:
            self.release()
            raise DeviceError(f"queue {index}: mapping ring ref: {e}") from None
        except Exception as e:
            self.release()
            raise DeviceError(f"queue {index}: binding event channel {port}: {e}") from None
        self.req_cons = 0
        self.rsp_prod_pvt = 0
        self.broken = False
        self.served = 0
        self.errors = 0
        self.busy = 0.0  # seconds spent serving (bench/blk.py reports it)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name=f"blkback-d{dev.domid}-{dev.devid}-q{index}")
        self.thread.start()

    # --- the thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        assert self.port is not None
        fd = self.port.fileno()
        try:
            while True:
                r, _, _ = select.select([fd, self._stop_r], [], [])
                if self._stop_r in r:
                    return
                self.port.consume()
                if self.port.state != ECS_INTERDOMAIN:
                    return  # the frontend closed its end (or the domain is dying)
                if not self.broken:
                    t0 = time.perf_counter()
                    self.process()
                    self.busy += time.perf_counter() - t0
        except (ValueError, BufferError):
            return  # the grant mappings were revoked under us: the domain is being destroyed
        except Exception as e:  # noqa: BLE001 - a backend bug must not take the VMM down
            self.dev.log(f"queue {self.index}: stopped: {type(e).__name__}: {e}")

    def process(self) -> None:
        """Serve every request the frontend has posted, then ask to be woken for the next
        (RING_FINAL_CHECK_FOR_REQUESTS), answering in batches."""
        ring, hdr = self.ring, self.ring.hdr
        while True:
            rp = hdr[0]
            if (rp - self.req_cons) & 0xFFFFFFFF > ring.size:
                self.broken = True
                self.dev.log(f"queue {self.index}: frontend provided bogus ring requests "
                             f"({rp} - {self.req_cons} > {ring.size}): halting ring processing")
                return
            old = self.rsp_prod_pvt
            while self.req_cons != rp:
                raw = ring.read_entry(self.req_cons)
                self.req_cons = (self.req_cons + 1) & 0xFFFFFFFF
                op, rid, req = parse_request(raw, self.abi)
                status = self.dev.execute(self, req) if req is not None else B.BLKIF_RSP_ERROR
                if status != B.BLKIF_RSP_OKAY:
                    self.errors += 1
                ring.write_response(self.rsp_prod_pvt, rid, op, status)
                self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & 0xFFFFFFFF
                self.served += 1
            if self.rsp_prod_pvt != old:
                self._push(old)
            hdr[1] = (self.req_cons + 1) & 0xFFFFFFFF  # req_event
            _mb()
            if hdr[0] == self.req_cons:
                return

    def _push(self, old: int) -> None:
        """RING_PUSH_RESPONSES_AND_CHECK_NOTIFY."""
        hdr = self.ring.hdr
        new = self.rsp_prod_pvt
        _mb()
        hdr[2] = new
        _mb()
        if ((new - hdr[3]) & 0xFFFFFFFF) < ((new - old) & 0xFFFFFFFF) and self.port:
            self.port.notify()

    # --- grants ----------------------------------------------------------------------------

    def map_segment(self, ref: int, writable: bool) -> tuple[GrantMapping, bool]:
        """(mapping, transient): persistent grants stay mapped (read-write, as the
        protocol allows) until disconnect; others are unmapped after the request."""
        m = self.pgrants.get(ref)
        if m is not None:
            return m, False
        if self.dev.persistent and len(self.pgrants) < MAX_PGRANTS:
            m = self.dev.map(ref, readonly=False)
            self.pgrants[ref] = m
            return m, False
        return self.dev.map(ref, readonly=not writable), True

    def release(self) -> None:
        for m in [*self.pgrants.values(), *self.ring_maps]:
            self.dev.unmap(m)
        self.pgrants.clear()
        self.ring_maps.clear()
        if self.port is not None:
            with contextlib.suppress(Exception):
                self.port.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self.thread is not threading.current_thread():
            self.thread.join(5)
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.release()


_fence_word = ctypes.c_uint32(0)
_fence_addr = ctypes.addressof(_fence_word)


def _mb() -> None:
    """mb() where Xen's RING_* macros put one: a locked cmpxchg is a full barrier on x86
    (our req_event store must be visible before we read req_prod again)."""
    atomic.cmpxchg32(_fence_addr, 0, 0)


class Blkback(XenbusDevice):
    kind = "vbd"

    def __init__(self, bus, devid: int) -> None:  # noqa: ANN001
        super().__init__(bus, devid)
        self.fd = -1
        self.queues: list[BlkifQueue] = []
        self.readonly = True
        self.sectors = 0
        self.persistent = False
        self.discard = False
        self.lock = threading.Lock()
        # Linux blkback's statistics/ (xentop's VBD_OO/RD/WR/RSECT/WSECT): requests
        # served by kind, sectors moved; never out of requests (oo_req) here
        self.stats = dict.fromkeys(("oo_req", "rd_req", "wr_req", "f_req", "ds_req",
                                    "rd_sect", "wr_sect"), 0)

    # --- xenbus hooks --------------------------------------------------------------------

    def probe(self) -> None:
        self.write_nodes({
            "feature-flush-cache": 1,
            "feature-barrier": 1,
            "feature-persistent": 1,
            "feature-max-indirect-segments": MAX_INDIRECT_SEGMENTS,
            "multi-queue-max-queues": MAX_QUEUES,
            "max-ring-page-order": MAX_RING_PAGE_ORDER,
        })

    def _open(self) -> None:
        path = self.read("physical-device-path") or self.read("params") or ""
        mode = self.read("mode") or "r"
        self.readonly = mode != "w"
        if not path:
            raise DeviceError("no backing store (params is empty): nothing to serve")
        try:
            fd = os.open(path, (os.O_RDONLY if self.readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError(f"opening {path}: {e.strerror}") from None
        st = os.fstat(fd)
        size = os.lseek(fd, 0, os.SEEK_END)
        self.fd = fd
        self.sectors = size // SECTOR
        self.discard = (stat.S_ISREG(st.st_mode) and not self.readonly
                        and self.read("discard-enable") != "0")

    def connect(self) -> None:
        proto = self.read_frontend("protocol") or B.XEN_IO_PROTO_ABI_NATIVE
        abi = ABIS.get(proto)
        if abi is None:
            raise DeviceError(f"unknown fe protocol {proto}")
        self.persistent = self.read_frontend_int("feature-persistent", 0) == 1
        nq = self.read_frontend_int("multi-queue-num-queues", 1) or 1
        if not 1 <= nq <= MAX_QUEUES:
            raise DeviceError(f"guest requested {nq} queues, exceeding the maximum of "
                              f"{MAX_QUEUES}.")
        rings = []
        for q in range(nq):
            prefix = f"queue-{q}/" if nq > 1 else ""
            rings.append((self._ring_refs(prefix), self._port(prefix)))
        self._open()
        try:
            for q, (refs, port) in enumerate(rings):
                self.queues.append(BlkifQueue(self, q, refs, port, abi))
            info = 0
            if self.readonly:
                info |= B.VDISK_READONLY
            if self.read("device-type") == "cdrom":
                info |= B.VDISK_CDROM | B.VDISK_REMOVABLE
            nodes: dict[str, str | int] = {
                "sectors": self.sectors, "info": info, "sector-size": SECTOR,
                "physical-sector-size": SECTOR, "feature-discard": int(self.discard),
            }
            if self.discard:
                nodes.update({"discard-granularity": PAGE, "discard-alignment": 0,
                              "discard-secure": 0})
            self.write_nodes(nodes)
        except BaseException:
            self.disconnect()
            raise
        self.log(f"connected: {self.sectors} sectors, {nq} queue(s) of "
                 f"{len(rings[0][0])} page(s), {abi.name}"
                 + (", persistent grants" if self.persistent else "")
                 + (", read-only" if self.readonly else ""))

    def _ring_refs(self, prefix: str) -> list[int]:
        order = self.read_frontend_int(f"{prefix}ring-page-order")
        if order is None:
            order = self.read_frontend_int("ring-page-order", 0) or 0
        if not 0 <= order <= MAX_RING_PAGE_ORDER:
            raise DeviceError(f"{prefix}ring-page-order {order} > max-ring-page-order "
                              f"{MAX_RING_PAGE_ORDER}")
        if order == 0:
            ref = self.read_frontend_int(f"{prefix}ring-ref")
            if ref is None:
                raise DeviceError(f"reading {self.frontend_path}/{prefix}ring-ref")
            return [ref]
        refs = []
        for i in range(1 << order):
            ref = self.read_frontend_int(f"{prefix}ring-ref{i}")
            if ref is None:
                raise DeviceError(f"reading {self.frontend_path}/{prefix}ring-ref{i}")
            refs.append(ref)
        return refs

    def _port(self, prefix: str) -> int:
        port = self.read_frontend_int(f"{prefix}event-channel")
        if port is None:
            raise DeviceError(f"reading {self.frontend_path}/{prefix}event-channel")
        return port

    def disconnect(self) -> None:
        for q in self.queues:
            q.stop()
        if self.queues:
            served = sum(q.served for q in self.queues)
            errors = sum(q.errors for q in self.queues)
            busy = sum(q.busy for q in self.queues)
            self.log(f"disconnected: {served} request(s) served, {errors} refused, "
                     f"backend busy {busy:.3f} s")
        self.queues = []
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    # --- requests ------------------------------------------------------------------------

    def execute(self, q: BlkifQueue, req: Request) -> int:
        """One request, validated then served; the BLKIF_RSP_* status."""
        op = req.op
        if op in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE, B.BLKIF_OP_WRITE_BARRIER):
            self.stats["rd_req" if op == B.BLKIF_OP_READ else "wr_req"] += 1
            return self._rw(q, req)
        if op == B.BLKIF_OP_FLUSH_DISKCACHE:
            self.stats["f_req"] += 1
            return self._flush()
        if op == B.BLKIF_OP_DISCARD:
            self.stats["ds_req"] += 1
            return self._discard(req)
        return B.BLKIF_RSP_EOPNOTSUPP

    def _flush(self) -> int:
        try:
            os.fdatasync(self.fd)
        except OSError:
            return B.BLKIF_RSP_ERROR
        return B.BLKIF_RSP_OKAY

    def _discard(self, req: Request) -> int:
        if not self.discard:
            return B.BLKIF_RSP_EOPNOTSUPP if not self.readonly else B.BLKIF_RSP_ERROR
        if req.nr_sectors > self.sectors or req.sector > self.sectors - req.nr_sectors:
            return B.BLKIF_RSP_ERROR
        if req.nr_sectors == 0:
            return B.BLKIF_RSP_OKAY
        rc = _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                             req.sector * SECTOR, req.nr_sectors * SECTOR)
        return B.BLKIF_RSP_OKAY if rc == 0 else B.BLKIF_RSP_ERROR

    def _segments(self, q: BlkifQueue, req: Request,
                  transient: list[GrantMapping]) -> list[tuple[int, int, int]]:
        """The request's segments; for an indirect one, read from its (mapped read-only,
        transient) indirect pages."""
        if req.indirect is None:
            return req.segs
        nseg, grefs = req.indirect
        segs: list[tuple[int, int, int]] = []
        for i, ref in enumerate(grefs):
            m = self.map(ref, readonly=True)
            transient.append(m)
            n = min(SEGS_PER_INDIRECT_FRAME, nseg - i * SEGS_PER_INDIRECT_FRAME)
            segs.extend(s[:3] for s in SEG.iter_unpack(bytes(m.buf[:8 * n])))
        return segs

    def _rw(self, q: BlkifQueue, req: Request) -> int:
        write = req.op != B.BLKIF_OP_READ
        if write and self.readonly:
            return B.BLKIF_RSP_ERROR
        transient: list[GrantMapping] = []
        try:
            segs = self._segments(q, req, transient)
            if not segs:
                if req.op == B.BLKIF_OP_WRITE_BARRIER:
                    return self._flush()  # a barrier with no data is a flush
                return B.BLKIF_RSP_ERROR
            total = 0
            for _, first, last in segs:
                if last >= SECTORS_PER_PAGE or first > last:
                    return B.BLKIF_RSP_ERROR
                total += last - first + 1
            if req.sector > self.sectors or total > self.sectors - req.sector:
                return B.BLKIF_RSP_ERROR
            bufs = []
            for ref, first, last in segs:
                m, is_transient = q.map_segment(ref, writable=not write)
                if is_transient:
                    transient.append(m)
                bufs.append(m.buf[first * SECTOR:(last + 1) * SECTOR])
            offset = req.sector * SECTOR
            want = total * SECTOR
            done = 0
            while done < want:  # short transfers continue where they stopped
                iov = _advance(bufs, done) if done else bufs
                n = (os.pwritev(self.fd, iov, offset + done) if write
                     else os.preadv(self.fd, iov, offset + done))
                if n <= 0:
                    return B.BLKIF_RSP_ERROR
                done += n
            if req.op == B.BLKIF_OP_WRITE_BARRIER:
                os.fdatasync(self.fd)
            self.stats["wr_sect" if write else "rd_sect"] += total
            return B.BLKIF_RSP_OKAY
        except GrantError:
            return B.BLKIF_RSP_ERROR
        except OSError:
            return B.BLKIF_RSP_ERROR
        finally:
            for m in transient:
                self.unmap(m)


def _advance(bufs: list[memoryview], n: int) -> list[memoryview]:
    out = []
    for b in bufs:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(b[n:])
        n = 0
    return out
