"""The PV console backend (xenconsoled's job, in the domain's VMM process).

A guest's console is a `struct xencons_interface` page (xen/io/console.h) at
HVM_PARAM_CONSOLE_PFN plus an event channel (HVM_PARAM_CONSOLE_EVTCHN) whose dom0 end is
ours. Guest output read from the ring is the console stream: it goes to console.sock
(hypervisor.console.Console: buffered while nobody is attached) and to a log file, as
xenconsoled's ``--log=guest`` does. console_io output is not part of it: as on Xen, it
goes to the hypervisor log. Console input goes into the ring once the guest uses it, else
to CONSOLEIO_read.

The page is shared with a hostile guest: indices are read once, checked, and impossible
ones are reported (hypervisor log) and the ring is reset instead of trusted.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..hypervisor.console import INPUT_BUFFER, Console

IN_OFF, IN_SIZE = 0, 1024
OUT_OFF, OUT_SIZE = 1024, 2048
IN_CONS, IN_PROD, OUT_CONS, OUT_PROD = 3072, 3076, 3080, 3084
INTERFACE_SIZE = 3088  # sizeof(struct xencons_interface)
U32 = 0xFFFFFFFF
_u32 = struct.Struct("<I")
ERROR_LOG_INTERVAL_S = 1.0  # a guest corrupting its ring in a loop cannot flood the log


class RingCorrupt(Exception):
    """The guest wrote impossible indices; the ring was reset."""


class ConsoleRing:
    """dom0's view of one xencons_interface: consumer of `out`, producer of `in`."""

    def __init__(self, buf: Any) -> None:
        mv = memoryview(buf).cast("B")
        if len(mv) < INTERFACE_SIZE or mv.readonly:
            raise ValueError(f"a console ring needs a writable buffer of {INTERFACE_SIZE} "
                             "bytes")
        self.mem = mv

    def _get(self, off: int) -> int:
        return _u32.unpack_from(self.mem, off)[0]

    def _put(self, off: int, val: int) -> None:
        _u32.pack_into(self.mem, off, val & U32)

    def read_output(self) -> bytes:
        """Everything the guest produced since the last call (consumes it).

        Raises RingCorrupt (after dropping the bogus contents) if out_prod - out_cons
        exceeds the ring size."""
        cons, prod = self._get(OUT_CONS), self._get(OUT_PROD)
        n = (prod - cons) & U32
        if n > OUT_SIZE:
            self._put(OUT_CONS, prod)
            raise RingCorrupt(f"output indices out_cons={cons} out_prod={prod} are "
                              f"{n} bytes apart (ring size {OUT_SIZE})")
        if not n:
            return b""
        start = cons % OUT_SIZE
        first = min(n, OUT_SIZE - start)
        data = bytes(self.mem[OUT_OFF + start:OUT_OFF + start + first])
        if first < n:
            data += bytes(self.mem[OUT_OFF:OUT_OFF + n - first])
        self._put(OUT_CONS, cons + n)
        return data

    def write_input(self, data: bytes) -> int:
        """Put as much of data as fits into `in`; returns how many bytes went in.

        Raises RingCorrupt (and resets in_prod to in_cons) on impossible indices."""
        cons, prod = self._get(IN_CONS), self._get(IN_PROD)
        used = (prod - cons) & U32
        if used > IN_SIZE:
            self._put(IN_PROD, cons)
            raise RingCorrupt(f"input indices in_cons={cons} in_prod={prod} are "
                              f"{used} bytes apart (ring size {IN_SIZE})")
        n = min(len(data), IN_SIZE - used)
        for i in range(n):  # at most 1 KiB: simple beats clever here
            self.mem[IN_OFF + (prod + i) % IN_SIZE] = data[i]
        if n:
            self._put(IN_PROD, prod + n)
        return n

    def input_consumed(self) -> int:
        """in_cons as the guest last wrote it (to notice a guest that reads the ring)."""
        return self._get(IN_CONS)


class Port(Protocol):
    """dom0's end of the console event channel (hypervisor.event_channel.BackendPort)."""

    def fileno(self) -> int: ...
    def notify(self) -> None: ...
    def consume(self) -> int: ...


class PvConsole(Console):
    """A domain's console: the PV ring's output as the stream, input to the ring (or to
    CONSOLEIO_read until the guest uses the ring).

    Without a ring it behaves exactly as hypervisor.console.Console (plus the log file).
    """

    def __init__(self, log_path: Path | None = None,
                 report: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._order = threading.RLock()  # one producer of the stream at a time
        self.ring: ConsoleRing | None = None
        self.port: Port | None = None
        self.report = report or (lambda msg: None)
        self.ring_in_use = False
        self._pending_in = bytearray()
        self._last_error = 0.0
        self._suppressed = 0
        self._log = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - lives with us
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None

    # --- the stream ------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        if self._log is not None:
            try:
                self._log.write(data)
            except OSError:
                pass
        Console.write(self, data)

    def feed(self, data: bytes) -> None:
        """Console input (console.sock): the ring once the guest uses it."""
        with self._order:
            if self.ring is None or not self.ring_in_use:
                super().feed(data)
                return
            self._pending_in += data
            if len(self._pending_in) > INPUT_BUFFER:
                del self._pending_in[: len(self._pending_in) - INPUT_BUFFER]
            moved = self._push_input()
        if moved and self.port is not None:
            self.port.notify()

    # --- the ring ---------------------------------------------------------------------

    def attach_ring(self, buf: Any, port: Port | None, poll_s: float = 0.05,
                    name: str = "console") -> None:
        """Serve the ring in `buf`; without a port (no event channels), poll it."""
        self.ring = ConsoleRing(buf)
        self.port = port
        self._poll_s = None if port is not None else poll_s
        self._thread = threading.Thread(target=self._serve, daemon=True, name=name)
        self._thread.start()

    def _fail(self, e: RingCorrupt) -> None:
        now = time.monotonic()
        if now - self._last_error < ERROR_LOG_INTERVAL_S:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since)" if self._suppressed else ""
        self._last_error, self._suppressed = now, 0
        self.report(f"console ring corrupt: {e}; ring reset{more}")

    def _drain(self) -> bool:
        """Move ring output into the stream (caller holds _order); True if any moved."""
        ring = self.ring
        if ring is None:
            return False
        try:
            data = ring.read_output()
        except RingCorrupt as e:
            self._fail(e)
            return True
        if data:
            self.ring_in_use = True
            self._deliver(data)
        return bool(data)

    def _push_input(self) -> bool:
        ring = self.ring
        if ring is None or not self._pending_in:
            return False
        try:
            n = ring.write_input(bytes(self._pending_in))
        except RingCorrupt as e:
            self._fail(e)
            return True
        del self._pending_in[:n]
        return n > 0

    def service(self) -> None:
        """One pass over the ring: output out, input in, notify the guest if anything
        moved (it may be waiting for space or data). Never raises."""
        try:
            with self._order:
                if self.ring is not None and self.ring.input_consumed():
                    self.ring_in_use = True
                moved = self._drain()
                moved = self._push_input() or moved
            if moved and self.port is not None:
                self.port.notify()
        except Exception as e:  # noqa: BLE001 - a backend bug must not kill the VMM
            self.report(f"console backend error: {type(e).__name__}: {e}")

    def _serve(self) -> None:
        while True:
            fds = [self._stop_r] + ([self.port.fileno()] if self.port is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], self._poll_s)
            except (OSError, ValueError):
                return  # the port was closed under us: the domain is going away
            if self._stop_r in ready:
                return
            if self.port is not None and ready:
                self.port.consume()  # (a freshly bound port starts notified: no hint)
            self.service()

    def close(self) -> None:
        """Stop serving; output still in the ring goes to the stream first."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(2)
        with self._order:
            self._drain()
        if self._log is not None:
            self._log.close()
            self._log = None
