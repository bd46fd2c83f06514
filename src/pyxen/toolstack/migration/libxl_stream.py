"""libxl's migration stream v2 (Xen's docs/specs/libxl-migration-stream.pandoc).

A big-endian header (ident "LibxlFmt", version 2, options), then records framed as
libxc's are. LIBXC_CONTEXT (empty) says "libxc's own stream follows inline here": the
libxc image runs to its END record, after which libxl records resume (emulator records
for a domain with a device model; a PVH domain has none) up to libxl's END.
"""

from __future__ import annotations

import struct

from .errors import StreamError
from .wire import Input, RawRecord, read_record, record

HDR = struct.Struct(">QII")  # ident u64, version u32, options u32
IDENT = 0x4C6962786C466D74  # "LibxlFmt"
VERSION = 2
OPT_BIG_ENDIAN = 1 << 0
OPT_LEGACY = 1 << 1  # written by the legacy conversion tool

REC_TYPE_END = 0x00
REC_TYPE_LIBXC_CONTEXT = 0x01
REC_TYPE_EMULATOR_XENSTORE_DATA = 0x02
REC_TYPE_EMULATOR_CONTEXT = 0x03
REC_TYPE_CHECKPOINT_END = 0x04
REC_TYPE_CHECKPOINT_STATE = 0x05

REC_NAMES = {
    REC_TYPE_END: "END", REC_TYPE_LIBXC_CONTEXT: "LIBXC_CONTEXT",
    REC_TYPE_EMULATOR_XENSTORE_DATA: "EMULATOR_XENSTORE_DATA",
    REC_TYPE_EMULATOR_CONTEXT: "EMULATOR_CONTEXT", REC_TYPE_CHECKPOINT_END: "CHECKPOINT_END",
    REC_TYPE_CHECKPOINT_STATE: "CHECKPOINT_STATE",
}
MAX_EMULATOR_DATA = 32 << 20
REC_LIMITS = {
    REC_TYPE_END: 0, REC_TYPE_LIBXC_CONTEXT: 0, REC_TYPE_CHECKPOINT_END: 0,
    REC_TYPE_EMULATOR_XENSTORE_DATA: MAX_EMULATOR_DATA,
    REC_TYPE_EMULATOR_CONTEXT: MAX_EMULATOR_DATA, REC_TYPE_CHECKPOINT_STATE: 8,
}
UNSUPPORTED = {
    REC_TYPE_CHECKPOINT_END: "checkpointed streams (Remus/COLO) are not supported",
    REC_TYPE_CHECKPOINT_STATE: "checkpointed streams (COLO) are not supported",
}
EMULATOR_HDR = struct.Struct("<II")  # emulator_id, index
EMULATOR_IDS = {0: "unknown", 1: "qemu-traditional", 2: "qemu-upstream"}


def header() -> bytes:
    return HDR.pack(IDENT, VERSION, 0)


def libxc_context() -> bytes:
    return record(REC_TYPE_LIBXC_CONTEXT)


def end() -> bytes:
    return record(REC_TYPE_END)


def emulator_record(rtype: int, emulator_id: int, index: int, data: bytes) -> bytes:
    return record(rtype, EMULATOR_HDR.pack(emulator_id, index) + data)


def xenstore_data(pairs: dict[str, str]) -> bytes:
    """EMULATOR_XENSTORE_DATA's payload: NUL-terminated key, value, key, value..."""
    return b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs.items())


def read_header(inp: Input) -> int:
    """The stream header; returns its options. Only little-endian v2 streams are read."""
    off = inp.offset
    where = f"libxl stream header at offset {off}"
    ident, version, options = HDR.unpack(inp.read(HDR.size, where))
    if ident != IDENT:
        raise StreamError(f"{where}: ident {ident:#018x} is not \"LibxlFmt\": not a libxl "
                          "migration stream v2 (corrupt, or a legacy stream)")
    if version != VERSION:
        raise StreamError(f"{where}: stream version {version} is not supported (pyxen "
                          f"reads version {VERSION})")
    if options & OPT_BIG_ENDIAN:
        raise StreamError(f"{where}: a big-endian stream cannot be restored on x86")
    return options


def read(inp: Input, index: int) -> RawRecord:
    rec = read_record(inp, "libxl", REC_NAMES, REC_LIMITS, index)
    if rec.type in UNSUPPORTED:
        raise rec.error(UNSUPPORTED[rec.type])
    if REC_LIMITS.get(rec.type) == 0 and rec.body:
        raise rec.error(f"body length {len(rec.body)}: a {rec.name} record has none")
    return rec


def decode_emulator(rec: RawRecord) -> tuple[int, int, bytes]:
    if len(rec.body) < EMULATOR_HDR.size:
        raise rec.error(f"body of {len(rec.body)} octets is shorter than the emulator "
                        "sub-header")
    emulator_id, index = EMULATOR_HDR.unpack_from(rec.body)
    return emulator_id, index, rec.body[EMULATOR_HDR.size:]


def decode_xenstore_data(rec: RawRecord, data: bytes) -> dict[str, str]:
    if data and not data.endswith(b"\0"):
        raise rec.error("xenstore data does not end with a NUL")
    parts = data.split(b"\0")[:-1] if data else []
    if len(parts) % 2:
        raise rec.error("xenstore data has a key without a value")
    try:
        return {parts[i].decode("ascii"): parts[i + 1].decode("utf-8")
                for i in range(0, len(parts), 2)}
    except UnicodeDecodeError as e:
        raise rec.error(f"xenstore data is not text: {e}") from None
