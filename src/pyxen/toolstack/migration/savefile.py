"""xl's save-file header (tools/xl/xl_saverestore.c, xl_utils.h).

What ``xl save`` writes before libxl's stream, and ``xl migrate`` sends down its pipe:

    char     magic[32]          "Xen saved domain, xl format\\n \\0 \\r"
    uint32_t byteorder          0x01020304 in the saver's byte order
    uint32_t mandatory_flags    unknown ones => refuse (JSON = 1<<0, STREAMv2 = 1<<1)
    uint32_t optional_flags
    uint32_t optional_data_len
    optional data: uint32_t config_len, then config_len octets of the domain's
    configuration: libxl domain_config JSON, NUL-terminated, when the JSON flag is set
    (xl.cfg text otherwise, as xl < 4.5 wrote).

xl writes no padding: libxl's stream header follows the optional data directly.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from .errors import StreamError
from .wire import Input, Output

MAGIC = b"Xen saved domain, xl format\n \0 \r"
assert len(MAGIC) == 32
BYTEORDER = 0x01020304
HDR = struct.Struct("<32sIIII")  # x86: the domain's (little-endian) byte order
FLAG_JSON = 1 << 0  # XL_MANDATORY_FLAG_JSON
FLAG_STREAMV2 = 1 << 1  # XL_MANDATORY_FLAG_STREAMv2
FLAGS_ALL = FLAG_JSON | FLAG_STREAMV2
MAX_OPTIONAL_DATA = 16 << 20  # a domain_config is a few KiB; refuse to allocate more


@dataclass
class SaveFileHeader:
    mandatory_flags: int
    optional_flags: int
    config: dict[str, Any] | None  # libxl domain_config JSON, None when the file has none
    config_text: str | None = None  # xl.cfg text (no JSON flag), for an old xl's file


def encode(config: dict[str, Any] | None) -> bytes:
    """The header and optional data exactly as xl's save_domain_core_writeconfig."""
    flags = FLAG_STREAMV2
    optdata = b""
    if config is not None:
        data = (json.dumps(config, indent=4) + "\n").encode() + b"\0"  # with its NUL
        optdata = struct.pack("<I", len(data)) + data
        flags |= FLAG_JSON
    return HDR.pack(MAGIC, BYTEORDER, flags, 0, len(optdata)) + optdata


def write(out: Output, config: dict[str, Any] | None) -> None:
    out.write(encode(config))


def read(inp: Input) -> SaveFileHeader:
    """Read and check the header: foreign files, other byte orders, flags this xl does
    not know, a legacy (v1) stream or a malformed configuration are StreamErrors."""
    where = "xl save-file header at offset 0"
    raw = inp.read(HDR.size, where)
    magic, byteorder, mflags, oflags, optlen = HDR.unpack(raw)
    if magic != MAGIC:
        raise StreamError(f"{where}: file has wrong magic number - corrupt or for a "
                          "different tool?")
    if byteorder != BYTEORDER:
        raise StreamError(f"{where}: file has wrong byte order ({byteorder:#010x}): "
                          "saved on a host of the other endianness")
    bad = mflags & ~FLAGS_ALL
    if bad:
        raise StreamError(f"{where}: savefile has mandatory flag(s) {bad:#x} which are not "
                          "supported; need newer xl")
    if not mflags & FLAG_STREAMV2:
        raise StreamError(f"{where}: the savefile holds a legacy (pre-Xen 4.6) stream; "
                          "pyxen reads migration stream v2 only")
    if optlen > MAX_OPTIONAL_DATA:
        raise StreamError(f"{where}: optional data of {optlen} octets (more than "
                          f"{MAX_OPTIONAL_DATA}): corrupt savefile")
    where = f"xl save-file optional data at offset {inp.offset}"
    optdata = inp.read(optlen, where)
    if not optdata:
        return SaveFileHeader(mflags, oflags, None)
    if len(optdata) < 4:
        raise StreamError(f"{where}: savefile truncated (no room for the config length)")
    (config_len,) = struct.unpack_from("<I", optdata)
    if config_len > len(optdata) - 4:
        raise StreamError(f"{where}: savefile truncated (config of {config_len} octets, "
                          f"{len(optdata) - 4} left)")
    data = optdata[4:4 + config_len]
    if mflags & FLAG_JSON:
        try:
            text = data.rstrip(b"\0").decode("utf-8")
            config = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise StreamError(f"{where}: the domain configuration is not valid JSON: "
                              f"{str(e) or type(e).__name__}") from None
        if not isinstance(config, dict):
            raise StreamError(f"{where}: the domain configuration is not a JSON object")
        return SaveFileHeader(mflags, oflags, config)
    try:
        text = data.rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError as e:
        raise StreamError(f"{where}: the domain configuration is not text: {e}") from None
    return SaveFileHeader(mflags, oflags, None, text or None)
