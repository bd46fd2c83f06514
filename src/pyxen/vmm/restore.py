"""Restore mode of the VMM (`--restore-fd FD`). "built" is announced before the image is
read (with `"restoring": true`), so the toolstack sets the domain up (cgroups, xenstore)
while the pages stream in: for a live migration everything after the image's last record
is guest downtime. The image is read on its own thread; the end is the `restored` event,
a failure the `restore_failed` event with one line naming the record, after which the
toolstack destroys the domain, so a bad image leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from ..arch.x86.pvh import BuildError

STEP_ASIDE_S = 0.05


def restore_or_cleanup(domain: Any, machine: Any, server: Any, fd: int) -> dict[str, Any]:
    from ..toolstack.migration import StreamError
    from .domain_save import RestoreError, restore_stream

    try:
        with os.fdopen(fd, "rb", buffering=1 << 20) as inp:
            stats = restore_stream(domain, machine, inp, xl_header=False)
    except Exception as e:  # noqa: BLE001 - any failure: nothing may be left behind
        if not isinstance(e, StreamError | RestoreError | OSError):
            import traceback
            traceback.print_exc()
            e = RestoreError(f"internal error: {type(e).__name__}: {e}")
        for be in server.backends:
            with contextlib.suppress(Exception):
                be.close()
        server.cleanup()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BuildError(f"cannot restore: {msg}") from None
    return stats


def restore_in_background(domain: Any, machine: Any, fd: int) -> threading.Thread:
    """Read the image on a thread (the domain stays paused); announce the outcome."""
    def run() -> None:
        try:
            stats = restore_or_cleanup(domain, machine, _NoServer(), fd)
        except BuildError as e:
            domain.emit({"event": "restore_failed", "message": str(e)})
            return
        # time.time() of the image's END record and of this event (xl migrate-receive -d)
        domain.emit({"event": "restored", "end_at": stats["end_at"], "at": time.time()})
        # The event goes out on the server's thread, which needs the GIL: this thread
        # steps aside first (else up to the 5 ms switch interval here, downtime in a
        # migration), then logs and drops the received pfn set (~2 ms: restore_stream).
        time.sleep(STEP_ASIDE_S)
        domain.log(f"d{domain.domid}: restored {stats['pages']} pages in {stats['seconds']} s")

    t = threading.Thread(target=run, name=f"d{domain.domid}-restore", daemon=True)
    t.start()
    return t


class _NoServer:
    """restore_or_cleanup's server when the VMM already serves: the toolstack's destroy
    closes the backends and sockets, not the failed restore."""

    backends: list[Any] = []

    def cleanup(self) -> None:
        pass
