"""A migration stream's endpoint, named by the process that holds it: {"pid", "fd"}.

`xl migrate` holds the pipe to ssh (or the TCP socket) and `xl migrate-receive` holds its
stdin; the VMM that writes or reads the stream takes its own copy of that descriptor with
pidfd_getfd(2) (Linux 5.6+, same user), so the pages go from the VMM straight into the
pipe or socket, not through xl or hostd. Works for pipes, sockets and files alike (a
socket cannot be opened through /proc/PID/fd)."""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = {"x86_64": 438, "aarch64": 438}.get(platform.machine(), 438)


class StreamFdError(Exception):
    """The stream's descriptor cannot be taken (the holder is gone, or not ours)."""


def stream_spec(fd: int) -> dict[str, int]:
    """How this process names one of its descriptors to hostd and the VMM."""
    return {"pid": os.getpid(), "fd": fd}


def take_fd(spec: Any) -> int:
    """A new descriptor (close-on-exec) for the spec's file; StreamFdError if impossible."""
    if (not isinstance(spec, dict) or not isinstance(spec.get("pid"), int)
            or not isinstance(spec.get("fd"), int)):
        raise StreamFdError("a stream is named by {'pid': int, 'fd': int}")
    try:
        pidfd = os.pidfd_open(spec["pid"])
    except OSError as e:
        raise StreamFdError(f"stream holder pid {spec['pid']}: {e.strerror}") from None
    try:
        fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, spec["fd"], 0)
        if fd < 0:
            err = ctypes.get_errno()
            raise StreamFdError(f"cannot take fd {spec['fd']} of pid {spec['pid']}: "
                                f"{os.strerror(err)}")
        return fd
    finally:
        os.close(pidfd)
