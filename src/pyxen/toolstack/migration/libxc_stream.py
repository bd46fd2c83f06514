"""libxc's domain image format, migration stream v2 (version 3 as Xen 4.17 writes it).

Xen's docs/specs/libxc-migration-stream.pandoc: an image header (big-endian, marker
0xFFFFFFFFFFFFFFFF, "XENF", version, options), a domain header (x86 HVM: PVH domains are
HVM to libxc), then records framed as ``type u32, body_length u32, body, 0-7 octets of
zero padding``. Version 3 adds STATIC_DATA_END ahead of memory and register content; a
version 2 stream is read as if STATIC_DATA_END preceded its first PAGE_DATA.

This module only encodes and decodes; stream.py puts the records in order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import StreamError
from .wire import Input, RawRecord, read_record, record, record_header

# Image header: marker u64, id u32, version u32, options u16, reserved u16 + u32.
IHDR = struct.Struct(">QIIHHI")
IHDR_MARKER = 0xFFFF_FFFF_FFFF_FFFF
IHDR_ID = 0x58454E46  # "XENF"
IHDR_VERSION = 3
IHDR_VERSIONS = (2, 3)  # what restore accepts (the spec: V and V-1)
IHDR_OPT_BIG_ENDIAN = 1 << 0

# Domain header: type u32, page_shift u16, reserved u16, xen_major u32, xen_minor u32.
DHDR = struct.Struct("<IHHII")
DHDR_TYPE_X86_PV = 0x0001
DHDR_TYPE_X86_HVM = 0x0002
DHDR_TYPE_X86_PVH_OLD = 0x0003  # an early draft's PVH; never written by a release
DHDR_TYPE_ARM = 0x0004
DHDR_TYPES = {DHDR_TYPE_X86_PV: "x86 PV", DHDR_TYPE_X86_HVM: "x86 HVM",
              DHDR_TYPE_X86_PVH_OLD: "x86 PVH (draft)", DHDR_TYPE_ARM: "ARM"}
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
XEN_MAJOR, XEN_MINOR = 4, 17  # the Xen whose toolstack pyxen's images claim to be

# Record types.
REC_TYPE_END = 0x00
REC_TYPE_PAGE_DATA = 0x01
REC_TYPE_X86_PV_INFO = 0x02
REC_TYPE_X86_PV_P2M_FRAMES = 0x03
REC_TYPE_X86_PV_VCPU_BASIC = 0x04
REC_TYPE_X86_PV_VCPU_EXTENDED = 0x05
REC_TYPE_X86_PV_VCPU_XSAVE = 0x06
REC_TYPE_SHARED_INFO = 0x07
REC_TYPE_X86_TSC_INFO = 0x08
REC_TYPE_HVM_CONTEXT = 0x09
REC_TYPE_HVM_PARAMS = 0x0A
REC_TYPE_TOOLSTACK = 0x0B
REC_TYPE_X86_PV_VCPU_MSRS = 0x0C
REC_TYPE_VERIFY = 0x0D
REC_TYPE_CHECKPOINT = 0x0E
REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST = 0x0F
REC_TYPE_STATIC_DATA_END = 0x10
REC_TYPE_X86_CPUID_POLICY = 0x11
REC_TYPE_X86_MSR_POLICY = 0x12

REC_NAMES = {
    REC_TYPE_END: "END", REC_TYPE_PAGE_DATA: "PAGE_DATA",
    REC_TYPE_X86_PV_INFO: "X86_PV_INFO", REC_TYPE_X86_PV_P2M_FRAMES: "X86_PV_P2M_FRAMES",
    REC_TYPE_X86_PV_VCPU_BASIC: "X86_PV_VCPU_BASIC",
    REC_TYPE_X86_PV_VCPU_EXTENDED: "X86_PV_VCPU_EXTENDED",
    REC_TYPE_X86_PV_VCPU_XSAVE: "X86_PV_VCPU_XSAVE", REC_TYPE_SHARED_INFO: "SHARED_INFO",
    REC_TYPE_X86_TSC_INFO: "X86_TSC_INFO", REC_TYPE_HVM_CONTEXT: "HVM_CONTEXT",
    REC_TYPE_HVM_PARAMS: "HVM_PARAMS", REC_TYPE_TOOLSTACK: "TOOLSTACK",
    REC_TYPE_X86_PV_VCPU_MSRS: "X86_PV_VCPU_MSRS", REC_TYPE_VERIFY: "VERIFY",
    REC_TYPE_CHECKPOINT: "CHECKPOINT",
    REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST: "CHECKPOINT_DIRTY_PFN_LIST",
    REC_TYPE_STATIC_DATA_END: "STATIC_DATA_END",
    REC_TYPE_X86_CPUID_POLICY: "X86_CPUID_POLICY", REC_TYPE_X86_MSR_POLICY: "X86_MSR_POLICY",
}

# PAGE_DATA: count u32, reserved u32, count pfn words, then the pages that have data.
MAX_BATCH = 1024  # pages per PAGE_DATA record (libxc's MAX_BATCH_SIZE)
PAGE_DATA_HDR = struct.Struct("<II")
PFN_MASK = (1 << 52) - 1
TYPE_SHIFT = 60  # XEN_DOMCTL_PFINFO_* (<< 28) shifted by a further 32
# XEN_DOMCTL_PFINFO_* page types (public/domctl.h, >> 28).
PFINFO_NOTAB = 0x0
PFINFO_L1TAB, PFINFO_L2TAB, PFINFO_L3TAB, PFINFO_L4TAB = 0x1, 0x2, 0x3, 0x4
PFINFO_BROKEN = 0xD
PFINFO_XALLOC = 0xE
PFINFO_XTAB = 0xF
PFINFO_RESERVED = range(0x5, 0x9)  # "restoring an image with unrecognised page types shall fail"
PFINFO_NO_DATA = (PFINFO_BROKEN, PFINFO_XALLOC, PFINFO_XTAB)

TSC_INFO = struct.Struct("<IIQII")  # mode, khz, nsec, incarnation, reserved
HVM_PARAMS_HDR = struct.Struct("<II")  # count, reserved
HVM_PARAM = struct.Struct("<QQ")  # index, value
CPUID_LEAF = struct.Struct("<IIIIII")  # xen_cpuid_leaf_t: leaf, subleaf, a, b, c, d
MSR_ENTRY = struct.Struct("<IIQ")  # xen_msr_entry_t: idx, flags, val

MAX_HVM_CONTEXT = 16 << 20
MAX_HVM_PARAMS = 256
MAX_POLICY_ENTRIES = 4096

# Body limits, checked before a body is read.
REC_LIMITS = {t: 0 for t in REC_NAMES}
REC_LIMITS.update({
    REC_TYPE_PAGE_DATA: PAGE_DATA_HDR.size + MAX_BATCH * (8 + PAGE_SIZE),
    REC_TYPE_X86_TSC_INFO: TSC_INFO.size,
    REC_TYPE_HVM_CONTEXT: MAX_HVM_CONTEXT,
    REC_TYPE_HVM_PARAMS: HVM_PARAMS_HDR.size + MAX_HVM_PARAMS * HVM_PARAM.size,
    REC_TYPE_X86_CPUID_POLICY: MAX_POLICY_ENTRIES * CPUID_LEAF.size,
    REC_TYPE_X86_MSR_POLICY: MAX_POLICY_ENTRIES * MSR_ENTRY.size,
    REC_TYPE_SHARED_INFO: PAGE_SIZE,
    # PV-only and checkpoint records are refused by type, so read none of their bodies.
})
ZERO_LENGTH = (REC_TYPE_END, REC_TYPE_STATIC_DATA_END, REC_TYPE_VERIFY, REC_TYPE_CHECKPOINT)
PV_ONLY = (REC_TYPE_X86_PV_INFO, REC_TYPE_X86_PV_P2M_FRAMES, REC_TYPE_X86_PV_VCPU_BASIC,
           REC_TYPE_X86_PV_VCPU_EXTENDED, REC_TYPE_X86_PV_VCPU_XSAVE,
           REC_TYPE_X86_PV_VCPU_MSRS, REC_TYPE_SHARED_INFO)
UNSUPPORTED = {
    REC_TYPE_TOOLSTACK: "the deprecated TOOLSTACK record is not supported",
    REC_TYPE_VERIFY: "VERIFY (debug resend of memory) is not supported",
    REC_TYPE_CHECKPOINT: "checkpointed streams (Remus/COLO) are not supported",
    REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST: "checkpointed streams (Remus/COLO) are not supported",
}
STATIC_RECORDS = (REC_TYPE_X86_CPUID_POLICY, REC_TYPE_X86_MSR_POLICY)


# --- encoding --------------------------------------------------------------------------

def image_header(version: int = IHDR_VERSION) -> bytes:
    return IHDR.pack(IHDR_MARKER, IHDR_ID, version, 0, 0, 0)


def domain_header(dtype: int = DHDR_TYPE_X86_HVM, xen_major: int = XEN_MAJOR,
                  xen_minor: int = XEN_MINOR) -> bytes:
    return DHDR.pack(dtype, PAGE_SHIFT, 0, xen_major, xen_minor)


def page_data_header(pfns: Sequence[int], types: Sequence[int] | None, npages: int) -> bytes:
    """Record header, count and pfn words of a PAGE_DATA record whose ``npages`` pages of
    data the caller writes next (so page contents are never copied)."""
    count = len(pfns)
    if not 0 < count <= MAX_BATCH:
        raise ValueError(f"PAGE_DATA holds 1 to {MAX_BATCH} pages, not {count}")
    if types is None:
        words = pfns
        bad = [p for p in pfns if not 0 <= p <= PFN_MASK]
    else:
        if len(types) != count:
            raise ValueError("PAGE_DATA needs one type per pfn")
        bad = [p for p in pfns if not 0 <= p <= PFN_MASK]
        if any(not 0 <= t <= 0xF or t in PFINFO_RESERVED for t in types):
            raise ValueError(f"PAGE_DATA page types must be XEN_DOMCTL_PFINFO_*: {types}")
        words = [p | (t << TYPE_SHIFT) for p, t in zip(pfns, types, strict=True)]
    if bad:
        raise ValueError(f"pfn {bad[0]:#x} does not fit a PAGE_DATA pfn word (52 bits)")
    length = PAGE_DATA_HDR.size + 8 * count + PAGE_SIZE * npages
    return (record_header(REC_TYPE_PAGE_DATA, length) + PAGE_DATA_HDR.pack(count, 0)
            + struct.pack(f"<{count}Q", *words))


def tsc_info(mode: int, khz: int, nsec: int, incarnation: int) -> bytes:
    return record(REC_TYPE_X86_TSC_INFO, TSC_INFO.pack(mode, khz, nsec, incarnation, 0))


def hvm_context(blob: bytes) -> bytes:
    if not 0 < len(blob) <= MAX_HVM_CONTEXT:
        raise ValueError(f"HVM context of {len(blob)} octets (1 to {MAX_HVM_CONTEXT})")
    return record(REC_TYPE_HVM_CONTEXT, bytes(blob))


def hvm_params(params: dict[int, int]) -> bytes:
    if not 0 < len(params) <= MAX_HVM_PARAMS:
        raise ValueError(f"HVM_PARAMS holds 1 to {MAX_HVM_PARAMS} params, not {len(params)}")
    body = HVM_PARAMS_HDR.pack(len(params), 0) + b"".join(
        HVM_PARAM.pack(i, v) for i, v in sorted(params.items()))
    return record(REC_TYPE_HVM_PARAMS, body)


def cpuid_policy(leaves: Sequence[tuple[int, int, int, int, int, int]]) -> bytes:
    if not 0 < len(leaves) <= MAX_POLICY_ENTRIES:
        raise ValueError(f"X86_CPUID_POLICY holds 1 to {MAX_POLICY_ENTRIES} leaves")
    return record(REC_TYPE_X86_CPUID_POLICY, b"".join(CPUID_LEAF.pack(*x) for x in leaves))


def msr_policy(entries: Sequence[tuple[int, int, int]]) -> bytes:
    if not 0 < len(entries) <= MAX_POLICY_ENTRIES:
        raise ValueError(f"X86_MSR_POLICY holds 1 to {MAX_POLICY_ENTRIES} entries")
    return record(REC_TYPE_X86_MSR_POLICY, b"".join(MSR_ENTRY.pack(*x) for x in entries))


def end() -> bytes:
    return record(REC_TYPE_END)


def static_data_end() -> bytes:
    return record(REC_TYPE_STATIC_DATA_END)


# --- decoding --------------------------------------------------------------------------

@dataclass
class ImageInfo:
    """What the two headers said."""

    version: int
    domain_type: int
    page_shift: int
    xen_major: int
    xen_minor: int


def read_headers(inp: Input) -> ImageInfo:
    """The image and domain headers; only a little-endian x86 HVM image of 4 KiB pages
    (what a PVH domain is to libxc) is accepted."""
    off = inp.offset
    marker, ident, version, options, _r1, _r2 = IHDR.unpack(
        inp.read(IHDR.size, f"libxc image header at offset {off}"))
    where = f"libxc image header at offset {off}"
    if marker != IHDR_MARKER or ident != IHDR_ID:
        raise StreamError(f"{where}: not a libxc domain image (marker {marker:#018x}, id "
                          f"{ident:#010x}; want {IHDR_MARKER:#x}, {IHDR_ID:#x} \"XENF\"): "
                          "corrupt stream, or a legacy (Xen <= 4.5) image")
    if version not in IHDR_VERSIONS:
        raise StreamError(f"{where}: image format version {version} is not supported "
                          f"(pyxen reads versions {', '.join(map(str, IHDR_VERSIONS))})")
    if options & IHDR_OPT_BIG_ENDIAN:
        raise StreamError(f"{where}: a big-endian image cannot be restored on x86")
    off = inp.offset
    dtype, page_shift, _res, major, minor = DHDR.unpack(
        inp.read(DHDR.size, f"libxc domain header at offset {off}"))
    where = f"libxc domain header at offset {off}"
    if dtype != DHDR_TYPE_X86_HVM:
        what = DHDR_TYPES.get(dtype, f"unknown type {dtype:#x}")
        raise StreamError(f"{where}: the image is of an {what} domain; pyxen restores "
                          "x86 HVM images (PVH domains)")
    if page_shift != PAGE_SHIFT:
        raise StreamError(f"{where}: page_shift {page_shift} (pages of {1 << min(page_shift, 63)}"
                          f" octets); x86 pages are 4096 octets (page_shift 12)")
    return ImageInfo(version, dtype, page_shift, major, minor)


def read(inp: Input, index: int) -> RawRecord:
    """The next libxc record, its type known and its length within that type's limit;
    PV-only and unsupported types are refused here."""
    rec = read_record(inp, "libxc", REC_NAMES, REC_LIMITS, index)
    if rec.type in PV_ONLY:
        raise rec.error("an x86 PV record in an x86 HVM image: corrupt stream")
    if rec.type in UNSUPPORTED:
        raise rec.error(UNSUPPORTED[rec.type])
    if rec.type in ZERO_LENGTH and rec.body:
        raise rec.error(f"body length {len(rec.body)}: a {rec.name} record has none")
    return rec


def decode_page_data(rec: RawRecord) -> tuple[list[int], list[int], memoryview]:
    """pfns, their types, and the concatenated data of the pages that carry data (a view
    into the record's body: the pages are copied once, into guest memory)."""
    body = rec.body
    if len(body) < PAGE_DATA_HDR.size:
        raise rec.error(f"body of {len(body)} octets is shorter than its count field")
    count, _res = PAGE_DATA_HDR.unpack_from(body)
    if not 0 < count <= MAX_BATCH:
        raise rec.error(f"page count {count} (a PAGE_DATA record holds 1 to {MAX_BATCH})")
    words_end = PAGE_DATA_HDR.size + 8 * count
    if len(body) < words_end:
        raise rec.error(f"body of {len(body)} octets cannot hold {count} pfn words")
    words = struct.unpack_from(f"<{count}Q", body, PAGE_DATA_HDR.size)
    pfns = [w & PFN_MASK for w in words]
    types = [w >> TYPE_SHIFT for w in words]
    for i, t in enumerate(types):
        if t in PFINFO_RESERVED:
            raise rec.error(f"pfn {pfns[i]:#x} (index {i}) has unrecognised page type {t:#x}")
    npages = sum(1 for t in types if t not in PFINFO_NO_DATA)
    want = words_end + PAGE_SIZE * npages
    if len(body) != want:
        raise rec.error(f"body length {len(body)}, but {count} pfns with {npages} pages of "
                        f"data need {want}")
    return pfns, types, memoryview(body)[words_end:]


def decode_tsc_info(rec: RawRecord) -> tuple[int, int, int, int]:
    if len(rec.body) != TSC_INFO.size:
        raise rec.error(f"body length {len(rec.body)}, an X86_TSC_INFO record has "
                        f"{TSC_INFO.size}")
    mode, khz, nsec, incarnation, _res = TSC_INFO.unpack(rec.body)
    return mode, khz, nsec, incarnation


def decode_hvm_params(rec: RawRecord) -> dict[int, int]:
    body = rec.body
    if not body:
        return {}  # the spec's errata: Xen 4.6-4.8 could write an empty HVM_PARAMS
    if len(body) < HVM_PARAMS_HDR.size:
        raise rec.error(f"body of {len(body)} octets is shorter than its count field")
    count, _res = HVM_PARAMS_HDR.unpack_from(body)
    want = HVM_PARAMS_HDR.size + count * HVM_PARAM.size
    if len(body) != want:
        raise rec.error(f"body length {len(body)}, but {count} params need {want}")
    return dict(HVM_PARAM.iter_unpack(body[HVM_PARAMS_HDR.size:]))


HVM_SAVE_DESC = struct.Struct("<HHI")  # public/hvm/save.h: typecode, instance, length
HVM_SAVE_CODE_END, HVM_SAVE_CODE_HEADER = 0, 1


def check_hvm_context(rec: RawRecord) -> None:
    """The blob's framing (public/hvm/save.h): descriptors chained from HEADER to an
    empty END that ends the blob. The entries themselves are the restorer's to check."""
    body, pos, first = rec.body, 0, True
    while True:
        if pos + HVM_SAVE_DESC.size > len(body):
            raise rec.error(f"HVM context: descriptor at octet {pos} runs past the "
                            f"{len(body)}-octet blob (no END)")
        code, _inst, length = HVM_SAVE_DESC.unpack_from(body, pos)
        if first and code != HVM_SAVE_CODE_HEADER:
            raise rec.error(f"HVM context starts with typecode {code}, not HEADER")
        first = False
        pos += HVM_SAVE_DESC.size
        if length > len(body) - pos:
            raise rec.error(f"HVM context: entry of typecode {code} at octet "
                            f"{pos - HVM_SAVE_DESC.size} has length {length}, past the blob")
        pos += length
        if code == HVM_SAVE_CODE_END:
            if length or pos != len(body):
                raise rec.error(f"HVM context: END at octet {pos - length - 8} is not the "
                                f"empty last entry of the blob")
            return


def decode_cpuid_policy(rec: RawRecord) -> list[tuple[int, ...]]:
    if len(rec.body) % CPUID_LEAF.size:
        raise rec.error(f"body length {len(rec.body)} is not a whole number of "
                        f"{CPUID_LEAF.size}-octet xen_cpuid_leaf_t")
    return list(CPUID_LEAF.iter_unpack(rec.body))


def decode_msr_policy(rec: RawRecord) -> list[tuple[int, ...]]:
    if len(rec.body) % MSR_ENTRY.size:
        raise rec.error(f"body length {len(rec.body)} is not a whole number of "
                        f"{MSR_ENTRY.size}-octet xen_msr_entry_t")
    return list(MSR_ENTRY.iter_unpack(rec.body))
