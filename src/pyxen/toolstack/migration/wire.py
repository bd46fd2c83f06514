"""Reading and writing the byte stream under the three formats, tracking the offset.

Readers never trust a length from the stream: every body length is checked against the
limit of its record type before anything is read, and short reads (end of file, a
dropped connection) become StreamError naming what was being read.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from .errors import StreamError

ALIGN = 8


def padding(length: int) -> int:
    """Octets of zeros after a body of ``length`` octets (records end 8-aligned)."""
    return -length % ALIGN


class Output:
    """A binary file object plus the count of octets written to it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offset = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        try:
            self.out.write(data)
        except OSError as e:
            raise StreamError(f"write failed at offset {self.offset}: "
                              f"{e.strerror or e}") from e
        self.offset += n

    def flush(self) -> None:
        try:
            self.out.flush()
        except OSError as e:
            raise StreamError(f"write failed at offset {self.offset}: "
                              f"{e.strerror or e}") from e


class Input:
    """A binary file object read exactly, with the offset of the next octet.

    It never asks for more than the field or record it is reading, so on an unbuffered
    file or socket the position afterwards is exactly past it: hostd reads the xl header
    and hands the descriptor to the VMM, which reads on from the libxl header."""

    def __init__(self, inp: BinaryIO) -> None:
        self.inp = inp
        self.offset = 0

    def read(self, n: int, what: str) -> bytes:
        """Exactly ``n`` octets (the caller bounded ``n``), else StreamError naming ``what``."""
        if n == 0:
            return b""
        chunks: list[bytes] = []
        got = 0
        while got < n:
            try:
                chunk = self.inp.read(n - got)
            except OSError as e:
                raise StreamError(f"{what}: read failed at offset {self.offset + got}: "
                                  f"{e.strerror or e}") from e
            if not chunk:
                raise StreamError(f"{what}: truncated (needs {n} octets at offset "
                                  f"{self.offset}, only {got} left)")
            chunks.append(chunk)
            got += len(chunk)
        self.offset += n
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


REC_HDR_SIZE = 8
OPTIONAL_BIT = 0x8000_0000
OPTIONAL_MAX = 16 << 20  # an optional record we skip: bounded all the same


class RawRecord:
    """One record as read: its type, body (padding dropped) and where it was."""

    __slots__ = ("type", "name", "body", "index", "offset", "layer")

    def __init__(self, rtype: int, name: str, body: bytes, index: int, offset: int,
                 layer: str) -> None:
        self.type, self.name, self.body = rtype, name, body
        self.index, self.offset, self.layer = index, offset, layer

    def where(self) -> str:
        return f"{self.layer} record {self.index} ({self.name}) at offset {self.offset}"

    def error(self, msg: str) -> StreamError:
        return StreamError(f"{self.where()}: {msg}")


def read_record(inp: Input, layer: str, names: dict[int, str], limits: dict[int, int],
                index: int) -> RawRecord:
    """Read one ``type, length, body, padding`` record (both streams share the framing).

    An unknown mandatory type, or a length over the type's limit, is an error before
    the body is read; an unknown optional type (bit 31) is returned for skipping."""
    offset = inp.offset
    where = f"{layer} record {index} at offset {offset}"
    rtype, length = struct.unpack("<II", inp.read(REC_HDR_SIZE, f"{where}: record header"))
    name = names.get(rtype)
    if name is None:
        if not rtype & OPTIONAL_BIT:
            raise StreamError(f"{where}: unknown record type {rtype:#010x} (corrupt stream, "
                              "or one from a newer Xen)")
        name, limit = f"optional {rtype:#010x}", OPTIONAL_MAX
    else:
        limit = limits[rtype]
    where = f"{layer} record {index} ({name}) at offset {offset}"
    if length > limit:
        raise StreamError(f"{where}: body length {length} is more than a {name} "
                          f"record can hold ({limit}): corrupt stream")
    pad = padding(length)
    body = inp.read(length + pad, where)
    return RawRecord(rtype, name, body[:length] if pad else body, index, offset, layer)


def record_header(rtype: int, length: int) -> bytes:
    return struct.pack("<II", rtype, length)


def record(rtype: int, body: bytes = b"") -> bytes:
    """A whole record: header, body, zero padding to 8 octets."""
    return record_header(rtype, len(body)) + body + bytes(padding(len(body)))
