"""xenbus for guests: the guest's xenstore ring, served by xenstored in another process.

Xen's toolstack puts the xenstore page at a fixed special PFN, gives the guest an unbound
event channel whose remote end is dom0 (HVM_PARAM_STORE_PFN / STORE_EVTCHN) and tells
xenstored with INTRODUCE <domid> <gfn> <port>; xenstored then maps the page and binds
the channel. Here the page and the channel live in the domain's VMM while xenstored runs
in hostd, so per DESIGN.md the VMM hands xenstored file descriptors over a Unix socket
(``$RUNDIR/domains/N/xenbus.sock``, SCM_RIGHTS):

  request  (hostd -> VMM) one JSON line: {"op": "map", "gfn": G, "port": P}
  reply    (VMM -> hostd) one JSON line {"ok": true, "offset": O} with three fds:
           a memfd holding the page (at O), an eventfd the VMM signals when the guest
           kicks the channel (xenstored's kick_fd), and an eventfd xenstored writes to
           notify the guest (the VMM turns it into EVTCHNOP_send from dom0).
           Errors: {"ok": false, "error": "..."} and no fds.

Only the store page is passed (its own memfd), never the guest's RAM. The hostd side is
`ring_mapper(root)`, for XenstoreServer.set_ring_mapper.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import mmap
import os
import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..xenstore.ring import RingTransport

log = logging.getLogger("pyxen.xenbus")

PAGE = 4096
# libxc's HVM special pages: 8 PFNs ending at 0xff000 (xc_dom_x86.c special_pfn()).
X86_HVM_END_SPECIAL_REGION = 0xFF000
X86_HVM_NR_SPECIAL_PAGES = 8
SPECIALPAGE_XENSTORE = 4
SPECIALPAGE_CONSOLE = 7
FIRST_SPECIAL_SLOT = 16  # KVM memory slots for special pages (RAM uses 0, 1)
SOCKET_NAME = "xenbus.sock"
REQUEST_MAX = 4096
TIMEOUT_S = 5.0
POLL_KICK_S = 0.05  # without event channels: how often xenstored looks at the ring


def special_pfn(index: int) -> int:
    return X86_HVM_END_SPECIAL_REGION - X86_HVM_NR_SPECIAL_PAGES + index


class SpecialPage:
    """One guest page outside RAM (in the MMIO hole, as Xen's special pages), backed by
    its own memfd so that it alone can be shared with another process."""

    def __init__(self, name: str, pfn: int) -> None:
        self.pfn = pfn
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, PAGE)
        self.map = mmap.mmap(self.fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.hva = ctypes.addressof(ctypes.c_char.from_buffer(self.map))

    @property
    def gpa(self) -> int:
        return self.pfn * PAGE

    def map_into(self, vm: Any, slot: int) -> None:
        """Make it guest memory: vm is arch.x86.kvm.Vm (set_memory_region)."""
        vm.set_memory_region(slot, self.gpa, PAGE, self.hva)


# --- VMM side ---------------------------------------------------------------------------


class StoreBridge:
    """Serves xenbus.sock: hands the store page and the channel's eventfds to xenstored.

    `bind()` returns dom0's end of the store channel (a hypervisor.event_channel
    BackendPort: fileno() readable when the guest notifies, notify() to kick it), made on
    the first request as xenstored binds on INTRODUCE; None runs without event
    channels (xenstored then gets a kick every POLL_KICK_S and the guest must poll).
    """

    def __init__(self, page: SpecialPage, store_port: int, sock_path: Path,
                 bind: Callable[[], Any] | None) -> None:
        self.page = page
        self.store_port = store_port
        self.sock_path = sock_path
        self._bind = bind
        self.port: Any = None
        self.notify_fd: int | None = None
        self.poll_fd: int | None = None  # fallback kick eventfd when there is no port
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread: threading.Thread | None = None

    def start(self) -> StoreBridge:
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        self.sock.bind(str(self.sock_path))
        os.chmod(self.sock_path, 0o600)
        self.sock.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="xenbus")
        self._thread.start()
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        for fd in (self.notify_fd, self.poll_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.notify_fd = self.poll_fd = None

    # --- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            fds = [self._stop_r, self.sock.fileno()]
            if self.notify_fd is not None:
                fds.append(self.notify_fd)
            timeout = POLL_KICK_S if self.poll_fd is not None else None
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            if self.sock.fileno() in ready:
                self._accept()
            if self.notify_fd is not None and self.notify_fd in ready:
                self._forward_notify()
            if self.poll_fd is not None:
                with contextlib.suppress(OSError):
                    os.eventfd_write(self.poll_fd, 1)

    def _forward_notify(self) -> None:
        """xenstored notified the guest: EVTCHNOP_send on dom0's end."""
        assert self.notify_fd is not None
        try:
            os.eventfd_read(self.notify_fd)
        except BlockingIOError:
            return
        if self.port is not None:
            try:
                self.port.notify()
            except Exception as e:  # noqa: BLE001 - e.g. the guest closed its end
                log.warning("xenstore notify failed: %s", e)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TIMEOUT_S)
            try:
                req = _read_line(conn)
                reply, fds = self.handle(req)
                _send(conn, reply, fds)
            except (OSError, ValueError) as e:
                log.warning("xenbus.sock: %s", e)

    def handle(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """One request -> (reply, fds to pass)."""
        if req.get("op") != "map":
            return {"ok": False, "error": f"unknown op {req.get('op')!r}"}, []
        gfn, port = req.get("gfn"), req.get("port")
        if gfn != self.page.pfn or port != self.store_port:
            return {"ok": False, "error": f"no xenstore page at gfn {gfn} with port {port} "
                                          f"(this domain's: gfn {self.page.pfn} port "
                                          f"{self.store_port})"}, []
        if self.port is None and self._bind is not None:
            try:
                self.port = self._bind()
            except Exception as e:  # noqa: BLE001 - e.g. the guest closed its port
                return {"ok": False, "error": f"cannot bind the store event channel: {e}"}, []
        # A new mapping (xenstored restarted) replaces the old notify channel.
        old = self.notify_fd
        self.notify_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if old is not None:
            os.close(old)
        if self.port is not None:
            kick = self.port.fileno()
        else:
            if self.poll_fd is None:
                self.poll_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            kick = self.poll_fd
        return {"ok": True, "offset": 0}, [self.page.fd, kick, self.notify_fd]


def _read_line(conn: socket.socket) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(REQUEST_MAX)
        if not chunk:
            raise ValueError("connection closed before a request")
        buf += chunk
        if len(buf) > REQUEST_MAX:
            raise ValueError("request too long")
    msg = json.loads(buf.split(b"\n", 1)[0])
    if not isinstance(msg, dict):
        raise ValueError("request is not an object")
    return msg


def _send(conn: socket.socket, reply: dict[str, Any], fds: list[int]) -> None:
    data = json.dumps(reply).encode() + b"\n"
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.sendall(data)


# --- hostd side -------------------------------------------------------------------------


class BridgedRing(RingTransport):
    """A RingTransport over a page received from a VMM; detach() releases the page and
    the eventfds, so a released domain leaves nothing open in xenstored."""

    def __init__(self, page: mmap.mmap, kick_fd: int, notify_fd: int) -> None:
        self.page = page
        self.notify_fd = notify_fd
        super().__init__(page, self._notify, kick_fd=kick_fd)

    def _notify(self) -> None:
        if self.notify_fd >= 0:
            try:
                os.eventfd_write(self.notify_fd, 1)
            except OSError:
                pass  # the VMM is gone; xenstored will release the domain

    def detach(self) -> None:
        super().detach()
        self.mem.release()
        with contextlib.suppress(BufferError):
            self.page.close()
        for fd in (self.kick_fd, self.notify_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.kick_fd, self.notify_fd = None, -1


def request_ring(sock_path: Path, gfn: int, port: int,
                 timeout: float = TIMEOUT_S) -> BridgedRing:
    """Ask a VMM for its guest's xenstore page; raises OSError/ValueError on failure."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(json.dumps({"op": "map", "gfn": gfn, "port": port}).encode() + b"\n")
        data, fds, _, _ = socket.recv_fds(s, REQUEST_MAX, 3)
    try:
        reply = json.loads(data.split(b"\n", 1)[0] or b"{}")
        if not isinstance(reply, dict) or not reply.get("ok"):
            raise ValueError(reply.get("error") if isinstance(reply, dict) else "bad reply")
        if len(fds) != 3:
            raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
        offset = reply.get("offset")
        page_fd, kick_fd, notify_fd = fds
        if (not isinstance(offset, int) or offset < 0 or offset % PAGE
                or os.fstat(page_fd).st_size < offset + PAGE):
            raise ValueError(f"bad page offset {offset!r}")
        page = mmap.mmap(page_fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                         offset=offset)
        os.close(page_fd)
        os.set_blocking(kick_fd, False)
        return BridgedRing(page, kick_fd, notify_fd)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise


def ring_mapper(root: Path) -> Callable[[int, int, int], RingTransport | None]:
    """XenstoreServer.set_ring_mapper(ring_mapper(rundir)): INTRODUCE maps the ring of
    domain N from $RUNDIR/domains/N/xenbus.sock."""

    def mapper(domid: int, gfn: int, port: int) -> RingTransport | None:
        path = root / "domains" / str(domid) / SOCKET_NAME
        try:
            return request_ring(path, gfn, port)
        except (OSError, ValueError) as e:
            log.warning("d%d: cannot map the xenstore ring (gfn %#x port %d): %s",
                        domid, gfn, port, e)
            return None

    return mapper
