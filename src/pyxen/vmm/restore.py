"""Restore mode of the VMM (`--restore-fd FD`): the image is read before "built" is
announced, so a bad image leaves nothing behind: one error line, exit 2."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..arch.x86.pvh import BuildError


def restore_or_cleanup(domain: Any, machine: Any, server: Any, fd: int) -> None:
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
    domain.log(f"d{domain.domid}: restored {stats['pages']} pages in {stats['seconds']} s")
