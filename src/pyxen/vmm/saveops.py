"""control.sock ops for save/restore (docs/internals.md, docs/migration.md).

- `take_fd`: the client's next byte carries one file descriptor (SCM_RIGHTS), kept for
  this connection's next `save`. The reply comes first, so the client sends the byte
  only once this side has stopped reading the connection through asyncio.
- `save` with `config` (libxl domain_config JSON) and `xl_header`: the domain is paused
  (it stays paused), the image goes onto the taken fd, reply `pages`, `bytes`, `seconds`.
  A failure (disk full, a closed pipe) is the one-line error; the domain is untouched.
- `resume` with `cancelled`: Xen's XEN_DOMCTL_resumedomain (+ libxc's modify_returncode
  when `cancelled`): a suspended guest sees SCHEDOP_shutdown return 1, and the domain
  runs again (one pause is dropped if `unpause`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

FD_TIMEOUT_S = 10.0


async def take_fd(writer: asyncio.StreamWriter, reply: bytes) -> int:
    """Pause asyncio's reading, send the reply, receive one fd on a dup of the socket."""
    transport = writer.transport
    transport.pause_reading()
    try:
        writer.write(reply)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        dup = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(sock.fileno()))
        try:
            dup.settimeout(FD_TIMEOUT_S)
            loop = asyncio.get_running_loop()
            _, fds, _, _ = await loop.run_in_executor(None, socket.recv_fds, dup, 1, 1)
        finally:
            dup.close()
    finally:
        transport.resume_reading()
    if not fds:
        raise OSError("take_fd: no file descriptor came with the byte")
    return fds[0]


def save(server: Any, req: dict[str, Any], fd: int | None) -> dict[str, Any]:
    """In an executor thread: pause, write the image, close the fd."""
    from ..toolstack.migration import StreamError
    from .domain_save import save_domain

    if fd is None:
        raise ValueError("save needs a file descriptor (take_fd first)")
    config = req.get("config")
    if not isinstance(config, dict):
        os.close(fd)
        raise ValueError("save needs the domain configuration ('config')")
    d = server.domain
    d.pause()
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            _test_hold()
            try:
                stats = save_domain(d, server.machine, out, config,
                                    xl_header=bool(req.get("xl_header", True)))
            except StreamError as e:
                raise SaveFailed(str(e)) from None
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as e:
                if e.errno not in (22, 29):  # EINVAL, ESPIPE: a pipe or socket
                    raise SaveFailed(f"writing the image: {e.strerror}") from None
    except OSError as e:
        raise SaveFailed(f"writing the image: {e.strerror or e}") from None
    finally:
        d.unpause()  # the caller paused it before (pause is counted)
    return stats


def _test_hold() -> None:
    """Tests only: PYXEN_TEST_HOLD_SAVE=FILE in the VMM's environment (hostd's) holds
    every save, the domain paused and the fd taken, once it has created FILE, until the
    test removes FILE (an hour at most): what else answers while a save is in flight."""
    path = os.environ.get("PYXEN_TEST_HOLD_SAVE")
    if not path:
        return
    open(path, "a").close()
    deadline = time.monotonic() + 3600
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


class SaveFailed(Exception):
    pass


def resume(server: Any, req: dict[str, Any]) -> None:
    from .domain_save import resume as resume_domain

    resume_domain(server.machine, bool(req.get("cancelled", True)))
