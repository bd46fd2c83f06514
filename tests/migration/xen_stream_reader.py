"""An independent reader of Xen save images, written from Xen's documents alone.

Sources: docs/specs/libxl-migration-stream.pandoc, docs/specs/libxc-migration-stream.pandoc
(version 3), tools/xl/xl_utils.h (struct save_file_header) and the public headers
xen/include/public/hvm/save.h + arch-x86/hvm/save.h (the HVM_CONTEXT blob's descriptors).
It deliberately imports nothing from pyxen, so a mistake shared by pyxen's writer and
pyxen's reader still shows up here.

``check_image(path)`` walks a whole image and checks, strictly, every field the specs
fix: magics, versions, options, reserved fields and padding zero, record lengths exact
for their type, record order (static data, STATIC_DATA_END, memory, then the domain
state records, libxc END, libxl END at the very end of the file). It returns one summary
dict per header/record; any violation raises ImageError naming the offset.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, BinaryIO


class ImageError(AssertionError):
    """The image breaks the spec (message names the offset and what)."""


XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
LIBXL_IDENT = 0x4C6962786C466D74
LIBXC_MARKER = 0xFFFFFFFFFFFFFFFF
LIBXC_ID = 0x58454E46

LIBXL_TYPES = {0: "END", 1: "LIBXC_CONTEXT", 2: "EMULATOR_XENSTORE_DATA",
               3: "EMULATOR_CONTEXT", 4: "CHECKPOINT_END", 5: "CHECKPOINT_STATE"}
LIBXC_TYPES = {0: "END", 1: "PAGE_DATA", 2: "X86_PV_INFO", 3: "X86_PV_P2M_FRAMES",
               4: "X86_PV_VCPU_BASIC", 5: "X86_PV_VCPU_EXTENDED", 6: "X86_PV_VCPU_XSAVE",
               7: "SHARED_INFO", 8: "X86_TSC_INFO", 9: "HVM_CONTEXT", 10: "HVM_PARAMS",
               11: "TOOLSTACK", 12: "X86_PV_VCPU_MSRS", 13: "VERIFY", 14: "CHECKPOINT",
               15: "CHECKPOINT_DIRTY_PFN_LIST", 16: "STATIC_DATA_END",
               17: "X86_CPUID_POLICY", 18: "X86_MSR_POLICY"}
HVM_SAVE_TYPES = {0: "END", 1: "HEADER", 2: "CPU", 3: "PIC", 4: "IOAPIC", 5: "LAPIC",
                  6: "LAPIC_REGS", 7: "PCI_IRQ", 8: "ISA_IRQ", 9: "PCI_LINK", 10: "PIT",
                  11: "RTC", 12: "HPET", 13: "PMTIMER", 14: "MTRR", 15: "VIRIDIAN_DOMAIN",
                  16: "CPU_XSAVE", 17: "VIRIDIAN_VCPU", 18: "VMCE_VCPU", 19: "TSC_ADJUST",
                  20: "CPU_MSR"}
PAGE = 4096


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ImageError(f"offset {self.pos}: {what}: wanted {n} octets, file has "
                             f"{len(data)}")
        self.pos += n
        return data


def _need(cond: bool, off: int, msg: str) -> None:
    if not cond:
        raise ImageError(f"offset {off}: {msg}")


def _record(r: _Reader, names: dict[int, str], layer: str,
            max_len: int = 64 << 20) -> tuple[int, str, bytes, int]:
    off = r.pos
    rtype, length = struct.unpack("<II", r.take(8, f"{layer} record header"))
    _need(rtype in names or bool(rtype & 0x80000000), off,
          f"{layer} record type {rtype:#x} is neither known nor optional")
    _need(length <= max_len, off, f"{layer} record length {length} is implausible")
    name = names.get(rtype, f"OPTIONAL_{rtype:#x}")
    body = r.take(length, f"{layer} {name} body")
    pad = r.take(-length % 8, f"{layer} {name} padding")
    _need(pad == bytes(len(pad)), off, f"{layer} {name}: padding is not zero")
    _need((8 + length + len(pad)) % 8 == 0, off, f"{layer} {name}: not 8-aligned")
    return rtype, name, body, off


def _hvm_context(blob: bytes, off: int) -> list[tuple[str, int, int]]:
    """The descriptors of an HVM save blob: HEADER first, END last, lengths chained."""
    out = []
    pos = 0
    while True:
        _need(pos + 8 <= len(blob), off, f"HVM_CONTEXT: descriptor at {pos} runs past "
              "the blob")
        code, inst, length = struct.unpack_from("<HHI", blob, pos)
        _need(code in HVM_SAVE_TYPES, off, f"HVM_CONTEXT: unknown typecode {code} at {pos}")
        _need(pos + 8 + length <= len(blob), off, f"HVM_CONTEXT: {HVM_SAVE_TYPES[code]} "
              f"at {pos} has length {length} past the blob")
        if not out:
            _need(code == 1 and length >= 24, off, "HVM_CONTEXT does not start with HEADER")
            magic, version = struct.unpack_from("<II", blob, pos + 8)
            _need(magic == 0x54381286 and version == 1, off,
                  f"HVM_CONTEXT header magic {magic:#x} version {version}")
        out.append((HVM_SAVE_TYPES[code], inst, length))
        pos += 8 + length
        if code == 0:
            _need(length == 0, off, "HVM_CONTEXT END has a body")
            _need(pos == len(blob), off, f"HVM_CONTEXT: {len(blob) - pos} octets after END")
            return out


def check_stream(f: BinaryIO, *, xl_header: bool = True,
                 whole_file: bool = True) -> list[dict[str, Any]]:
    """Check one image read from ``f``; see the module docstring."""
    r = _Reader(f)
    try:
        return _check(r, f, xl_header, whole_file)
    except (struct.error, ValueError) as e:  # a field too short to unpack, bad JSON
        raise ImageError(f"offset {r.pos}: malformed: {e}") from None


def _check(r: _Reader, f: BinaryIO, xl_header: bool, whole_file: bool
           ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    if xl_header:
        magic, bo, mflags, oflags, optlen = struct.unpack("<32sIIII", r.take(48, "xl header"))
        _need(magic == XL_MAGIC, 0, f"xl magic {magic!r}")
        _need(bo == 0x01020304, 32, f"xl byteorder {bo:#x}")
        _need(mflags & ~3 == 0 and mflags & 2, 36, f"xl mandatory flags {mflags:#x}")
        _need(oflags == 0, 40, f"xl optional flags {oflags:#x}")
        opt = r.take(optlen, "xl optional data")
        entry: dict[str, Any] = {"layer": "xl", "type": "HEADER", "offset": 0,
                                 "length": 48 + optlen, "flags": mflags}
        if optlen:
            _need(optlen >= 4, 48, "xl optional data shorter than its config length")
            (clen,) = struct.unpack_from("<I", opt)
            _need(clen == optlen - 4, 48, f"xl config length {clen} vs optional data "
                  f"{optlen}")
            cfg = opt[4:]
            if mflags & 1:
                _need(cfg.endswith(b"\0") and b"\0" not in cfg[:-1], 52,
                      "xl JSON config is not one NUL-terminated string")
                conf = json.loads(cfg[:-1].decode())
                _need(isinstance(conf, dict) and "c_info" in conf and "b_info" in conf, 52,
                      "xl JSON config is not a libxl domain_config")
                entry["config"] = conf
        else:
            _need(not mflags & 1, 36, "JSON flag without a config")
        out.append(entry)

    off = r.pos
    ident, version, options = struct.unpack(">QII", r.take(16, "libxl header"))
    _need(ident == LIBXL_IDENT, off, f"libxl ident {ident:#x}")
    _need(version == 2, off, f"libxl version {version}")
    _need(options == 0, off, f"libxl options {options:#x} (want little-endian, not legacy)")
    out.append({"layer": "libxl", "type": "HEADER", "offset": off, "length": 16})

    rtype, name, body, off = _record(r, LIBXL_TYPES, "libxl")
    _need(name == "LIBXC_CONTEXT" and not body, off,
          f"first libxl record is {name} (length {len(body)}), not an empty LIBXC_CONTEXT")
    out.append({"layer": "libxl", "type": name, "offset": off, "length": 0})

    off = r.pos
    marker, ident, version, options, res1, res2 = struct.unpack(
        ">QIIHHI", r.take(24, "libxc image header"))
    _need(marker == LIBXC_MARKER and ident == LIBXC_ID, off, "libxc marker/id")
    _need(version == 3, off, f"libxc version {version}")
    _need(options == 0 and res1 == 0 and res2 == 0, off, "libxc options/reserved")
    out.append({"layer": "libxc", "type": "IMAGE_HEADER", "offset": off, "length": 24})
    off = r.pos
    dtype, shift, res, major, minor = struct.unpack("<IHHII", r.take(16, "domain header"))
    _need(dtype == 2, off, f"domain type {dtype} (want 2, x86 HVM)")
    _need(shift == 12 and res == 0, off, f"page_shift {shift}, reserved {res}")
    out.append({"layer": "libxc", "type": "DOMAIN_HEADER", "offset": off, "length": 16,
                "xen": f"{major}.{minor}"})

    phase = "static"  # static -> memory -> state
    seen: dict[str, int] = {}
    while True:
        rtype, name, body, off = _record(r, LIBXC_TYPES, "libxc")
        entry = {"layer": "libxc", "type": name, "offset": off, "length": len(body)}
        seen[name] = seen.get(name, 0) + 1
        if name in ("X86_CPUID_POLICY", "X86_MSR_POLICY"):
            _need(phase == "static", off, f"{name} after STATIC_DATA_END")
            size = 24 if name == "X86_CPUID_POLICY" else 16
            _need(len(body) % size == 0 and body, off, f"{name} length {len(body)}")
            entry["entries"] = len(body) // size
        elif name == "STATIC_DATA_END":
            _need(phase == "static" and not body, off, "STATIC_DATA_END misplaced or not empty")
            phase = "memory"
        elif name == "PAGE_DATA":
            _need(phase == "memory", off, f"PAGE_DATA in phase {phase}")
            _need(len(body) >= 8, off, "PAGE_DATA too short")
            count, res = struct.unpack_from("<II", body)
            _need(count > 0 and res == 0, off, f"PAGE_DATA count {count} reserved {res}")
            _need(len(body) >= 8 + 8 * count, off, "PAGE_DATA pfn array truncated")
            words = struct.unpack_from(f"<{count}Q", body, 8)
            with_data = 0
            for w in words:
                t = w >> 60
                _need((w >> 52) & 0xFF == 0, off, f"PAGE_DATA pfn word {w:#x} reserved bits")
                _need(t not in (5, 6, 7, 8), off, f"PAGE_DATA page type {t:#x}")
                with_data += t not in (0xD, 0xE, 0xF)
            _need(len(body) == 8 + 8 * count + PAGE * with_data, off,
                  f"PAGE_DATA length {len(body)} for {count} pfns, {with_data} with data")
            entry.update(count=count, pages=with_data,
                         pfns=[w & ((1 << 52) - 1) for w in words])
        elif name == "X86_TSC_INFO":
            _need(phase in ("memory", "state"), off, "X86_TSC_INFO before STATIC_DATA_END")
            phase = "state"
            _need(len(body) == 24, off, f"X86_TSC_INFO length {len(body)}")
            mode, khz, nsec, inc, res = struct.unpack("<IIQII", body)
            _need(res == 0, off, "X86_TSC_INFO reserved")
            entry.update(mode=mode, khz=khz, nsec=nsec, incarnation=inc)
        elif name == "HVM_PARAMS":
            _need(phase in ("memory", "state"), off, "HVM_PARAMS before STATIC_DATA_END")
            phase = "state"
            count, res = struct.unpack_from("<II", body)
            _need(res == 0 and count > 0 and len(body) == 8 + 16 * count, off,
                  f"HVM_PARAMS count {count} length {len(body)}")
            entry["params"] = dict(struct.iter_unpack("<QQ", body[8:]))
        elif name == "HVM_CONTEXT":
            _need(phase in ("memory", "state"), off, "HVM_CONTEXT before STATIC_DATA_END")
            phase = "state"
            entry["descriptors"] = _hvm_context(body, off)
        elif name == "END":
            _need(not body, off, "libxc END has a body")
            out.append(entry)
            break
        elif rtype & 0x80000000:
            pass
        else:
            raise ImageError(f"offset {off}: libxc record {name} has no place in an x86 HVM "
                             "image")
        out.append(entry)
    for name in ("X86_TSC_INFO", "HVM_PARAMS"):
        _need(seen.get(name, 0) <= 1, r.pos, f"{name} {seen.get(name)} times")
    _need(seen.get("HVM_CONTEXT") == 1, r.pos, f"HVM_CONTEXT {seen.get('HVM_CONTEXT', 0)} "
          "times (want 1)")
    _need(seen.get("STATIC_DATA_END") == 1, r.pos, "no STATIC_DATA_END")

    while True:
        rtype, name, body, off = _record(r, LIBXL_TYPES, "libxl")
        _need(name in ("END", "EMULATOR_XENSTORE_DATA", "EMULATOR_CONTEXT")
              or bool(rtype & 0x80000000), off, f"libxl {name} after the libxc stream")
        out.append({"layer": "libxl", "type": name, "offset": off, "length": len(body)})
        if name == "END":
            _need(not body, off, "libxl END has a body")
            break
    if whole_file:
        _need(f.read(1) == b"", r.pos, "data after libxl END")
    return out


def check_image(path: str | Path, *, xl_header: bool = True) -> list[dict[str, Any]]:
    """Check the save image at ``path`` (an ``xl save`` file); returns the summaries."""
    with open(path, "rb") as f:
        return check_stream(f, xl_header=xl_header)


def summary_line(entry: dict[str, Any]) -> str:
    extra = {k: v for k, v in entry.items()
             if k not in ("layer", "type", "offset", "length", "pfns", "config")}
    return f"{entry['offset']:>10} {entry['layer']:5} {entry['type']:22} {entry['length']:>8} " \
           f"{extra if extra else ''}"


if __name__ == "__main__":  # python tests/migration/xen_stream_reader.py IMAGE
    import sys
    for e in check_image(sys.argv[1]):
        print(summary_line(e))
