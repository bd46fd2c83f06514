"""The xenstore wire protocol of Xen's io/xs_wire.h: message types, header, errors.

Every message on a socket or a shared ring is a 16-byte little-endian header
(type, req_id, tx_id, len) followed by ``len`` payload bytes, at most
XENSTORE_PAYLOAD_MAX. Errors travel as an XS_ERROR reply whose payload is the
errno *name* ("EINVAL\\0"), so the names below are part of the ABI.
"""

from __future__ import annotations

import enum
import struct

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size  # 16

XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

# struct xenstore_domain_interface (io/xs_wire.h)
XENSTORE_RING_SIZE = 1024
XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3


class Op(enum.IntEnum):
    """enum xsd_sockmsg_type (Xen 4.17)."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT (removed)
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


OP_VALUES = frozenset(int(o) for o in Op)

# The xsd_errors table, in ABI order. EQUOTA is oxenstored's name for "over quota"
# (the C table has no entry; C libxenstore maps unknown names to EINVAL).
XSD_ERRORS = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
)
EQUOTA = "EQUOTA"


class XenstoreError(Exception):
    """A xenstore operation failed with a Xen error name (e.g. "ENOENT")."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name

    @property
    def errno(self) -> int:
        """The POSIX errno for this error (EINVAL for names POSIX lacks, as libxenstore)."""
        import errno as _errno

        return getattr(_errno, self.name, _errno.EINVAL)


def pack(op: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """One framed message; the caller guarantees len(payload) <= XENSTORE_PAYLOAD_MAX."""
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


def error_payload(name: str) -> bytes:
    return name.encode() + b"\0"


def split_strings(payload: bytes) -> list[bytes] | None:
    """Split a payload of NUL-terminated strings; None if the last one is unterminated."""
    if not payload or payload[-1] != 0:
        return None
    return payload[:-1].split(b"\0")


def join_strings(items: list[bytes] | list[str]) -> bytes:
    """Each item NUL-terminated, as DIRECTORY/GET_PERMS replies are."""
    if not items:
        return b""
    if isinstance(items[0], str):
        return ("\0".join(items) + "\0").encode()  # type: ignore[arg-type]
    return b"\0".join(items) + b"\0"  # type: ignore[arg-type]
