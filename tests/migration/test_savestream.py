"""xl save images / migration streams: pyxen's writer and reader against each other, the
exact bytes the specs fix, an independent reader (xen_stream_reader.py, from Xen's specs
alone) on every image, and every way an image can be broken."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamhelpers import CONFIG, hvm_blob, image, page
from xen_stream_reader import ImageError, check_image, check_stream

from pyxen.toolstack.migration import (
    CpuidPolicy,
    End,
    HvmContext,
    HvmParams,
    MsrPolicy,
    PageData,
    SaveReader,
    SaveWriter,
    StreamError,
    TscInfo,
    read_image,
)


def read_all(data: bytes, **kw) -> tuple[dict, list]:
    return read_image(io.BytesIO(data), **kw)


def records_of(data: bytes, **kw) -> list:
    return read_all(data, **kw)[1]


# --- round trips -------------------------------------------------------------------------

def test_round_trip_and_independent_reader() -> None:
    data = image(policies=True)
    config, recs = read_all(data)
    assert config == CONFIG
    assert [type(r) for r in recs] == [CpuidPolicy, MsrPolicy, PageData, PageData, TscInfo,
                                       HvmContext, HvmParams, End]
    assert recs[2].pfns == [0, 1, 2] and recs[2].types == [0, 0, 0]
    assert recs[2].data == page(0, 0) + page(1, 0) + page(2, 0)
    assert [(p, bytes(v)) for p, v in recs[3].pages()] == [(1, page(1, 1)), (7, page(7, 1))]
    assert recs[4] == TscInfo(0, 2_000_000, 123456789, 1)
    assert recs[5] == HvmContext(hvm_blob())
    assert recs[6] == HvmParams({1: 0xFEFFE, 2: 0xFEFFF})
    assert recs[0].leaves[1] == (7, 0, 0, 0x209, 0, 0)
    assert recs[1].entries == [(0xCE, 0, 0x80000000)]
    # Xen's spec, read by code that shares nothing with pyxen's
    summary = check_stream(io.BytesIO(data))
    assert [(e["layer"], e["type"]) for e in summary] == [
        ("xl", "HEADER"), ("libxl", "HEADER"), ("libxl", "LIBXC_CONTEXT"),
        ("libxc", "IMAGE_HEADER"), ("libxc", "DOMAIN_HEADER"),
        ("libxc", "X86_CPUID_POLICY"), ("libxc", "X86_MSR_POLICY"),
        ("libxc", "STATIC_DATA_END"), ("libxc", "PAGE_DATA"), ("libxc", "PAGE_DATA"),
        ("libxc", "X86_TSC_INFO"), ("libxc", "HVM_CONTEXT"), ("libxc", "HVM_PARAMS"),
        ("libxc", "END"), ("libxl", "END")]
    assert summary[0]["config"] == CONFIG
    assert summary[9]["pfns"] == [1, 7]
    assert [d[0] for d in summary[11]["descriptors"]] == ["HEADER", "LAPIC", "END"]
    assert summary[12]["params"] == {1: 0xFEFFE, 2: 0xFEFFF}


def test_check_image_on_a_file(tmp_path) -> None:
    f = tmp_path / "dom.save"
    f.write_bytes(image())
    assert check_image(f)[-1]["type"] == "END"


batches = st.lists(st.lists(st.integers(0, (1 << 52) - 1), min_size=1, max_size=12),
                   max_size=5)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, extra=st.dictionaries(st.text(min_size=1, max_size=10), json_value,
                                              max_size=4),
       tsc=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                     st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
       params=st.dictionaries(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                              min_size=1, max_size=20),
       blob_extra=st.integers(0, 40), xl_header=st.booleans())
def test_round_trip_property(batches, extra, tsc, params, blob_extra, xl_header) -> None:
    config = {**CONFIG, **{f"x_{k}": v for k, v in extra.items()}}
    blob = hvm_blob(blob_extra)
    data = image(batches, xl_header=xl_header, config=config, tsc=tsc, params=params,
                 blob=blob)
    got_config, recs = read_all(data, xl_header=xl_header)
    assert got_config == (config if xl_header else {})
    pages = [r for r in recs if isinstance(r, PageData)]
    assert [p.pfns for p in pages] == batches
    for i, (p, pfns) in enumerate(zip(pages, batches, strict=True)):
        assert p.data == b"".join(page(x, i) for x in pfns)
    assert recs[-4:] == [TscInfo(*tsc), HvmContext(blob), HvmParams(params), End()]
    summary = check_stream(io.BytesIO(data), xl_header=xl_header)
    assert sum(e["type"] == "PAGE_DATA" for e in summary) == len(batches)


def test_xtab_pages_carry_no_data() -> None:
    out = io.BytesIO()
    w = SaveWriter(out, CONFIG)
    w.begin()
    w.page_data([5, 6, 7], page(5) + page(7), types=[0, 0xF, 0])
    w.tsc_info(0, 1, 2, 3)
    w.hvm_context(hvm_blob())
    w.finish()
    recs = records_of(out.getvalue())
    assert recs[0].types == [0, 0xF, 0]
    assert [p for p, _ in recs[0].pages()] == [5, 7]
    check_stream(io.BytesIO(out.getvalue()))


def test_large_image_streams_through_a_pipe_one_byte_at_a_time() -> None:
    """Many full batches, resent pfns (live migration), and a reader fed by short reads."""
    out = io.BytesIO()
    w = SaveWriter(out, CONFIG)
    w.begin()
    mem = bytearray(3000 * 4096)
    for p in range(3000):
        mem[p * 4096:p * 4096 + 8] = struct.pack("<Q", p)
    view = memoryview(mem)
    for start in range(0, 3000, 1024):
        n = min(1024, 3000 - start)
        w.page_data(range(start, start + n), view[start * 4096:(start + n) * 4096])
    w.page_data([17, 2999], view[17 * 4096:18 * 4096].tobytes() + b"\xaa" * 4096)
    w.tsc_info(0, 1, 2, 3)
    w.hvm_context(hvm_blob())
    w.finish()
    data = out.getvalue()
    assert w.pages_written == 3002

    class Trickle(io.RawIOBase):
        def __init__(self, b: bytes) -> None:
            self.b, self.i = b, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(n, 4093) if self.i % 2 else 1  # short reads, as from a socket
            chunk = self.b[self.i:self.i + n]
            self.i += len(chunk)
            return chunk

    reader = SaveReader(Trickle(data))  # type: ignore[arg-type]
    reader.begin()
    got = bytearray(3000 * 4096)
    for rec in reader.records():
        if isinstance(rec, PageData):
            for pfn, pg in rec.pages():
                got[pfn * 4096:(pfn + 1) * 4096] = pg
    mem[2999 * 4096:] = b"\xaa" * 4096
    assert got == mem and reader.offset == len(data) and reader.pages_read == 3002
    summary = check_stream(io.BytesIO(data))
    assert [e["count"] for e in summary if e["type"] == "PAGE_DATA"] == [1024, 1024, 952, 2]


def test_reader_stops_at_libxl_end() -> None:
    """Over a migration connection xl's messages follow the stream: not read."""
    data = image()
    inp = io.BytesIO(data + b"migration target: Ready to start domain.\n")
    _, recs = read_image(inp)
    assert isinstance(recs[-1], End) and inp.tell() == len(data)


# --- the bytes the specs fix ---------------------------------------------------------------

def test_exact_layout() -> None:
    data = image([[3]])
    assert data[:32] == b"Xen saved domain, xl format\n \0 \r"
    byteorder, mflags, oflags, optlen = struct.unpack_from("<IIII", data, 32)
    assert (byteorder, mflags, oflags) == (0x01020304, 3, 0)  # JSON | STREAMv2
    assert data[32:36] == b"\x04\x03\x02\x01"
    (clen,) = struct.unpack_from("<I", data, 48)
    assert clen == optlen - 4
    cfg = data[52:52 + clen]
    assert cfg.endswith(b"\0") and json.loads(cfg[:-1]) == CONFIG
    p = 48 + optlen  # xl writes no padding: libxl's header follows at once
    assert data[p:p + 16] == b"LibxlFmt" + b"\0\0\0\x02" + b"\0\0\0\0"
    assert data[p + 16:p + 24] == struct.pack("<II", 1, 0)  # LIBXC_CONTEXT, empty
    p += 24
    assert data[p:p + 24] == b"\xff" * 8 + b"XENF" + b"\0\0\0\x03" + bytes(8)
    assert data[p + 24:p + 40] == struct.pack("<IHHII", 2, 12, 0, 4, 17)
    p += 40
    assert data[p:p + 8] == struct.pack("<II", 0x10, 0)  # STATIC_DATA_END
    p += 8
    assert data[p:p + 24] == struct.pack("<IIIIQ", 1, 8 + 8 + 4096, 1, 0, 3)
    assert data[p + 24:p + 24 + 4096] == page(3, 0)
    p += 24 + 4096
    assert data[p:p + 32] == struct.pack("<IIIIQII", 8, 24, 0, 2_000_000, 123456789, 1, 0)
    p += 32
    blob = hvm_blob()
    pad = -len(blob) % 8
    assert data[p:p + 8] == struct.pack("<II", 9, len(blob)) and pad
    assert data[p + 8:p + 8 + len(blob) + pad] == blob + bytes(pad)
    p += 8 + len(blob) + pad
    assert data[p:p + 48] == struct.pack("<IIIIQQQQ", 0xA, 40, 2, 0, 1, 0xFEFFE, 2, 0xFEFFF)
    p += 48
    assert data[p:] == struct.pack("<II", 0, 0) * 2  # libxc END, libxl END


@pytest.mark.parametrize("n", range(1, 18))
def test_padding_to_8_octets(n: int) -> None:
    blob = hvm_blob(n)
    data = image([], blob=blob)
    summary = check_stream(io.BytesIO(data))  # checks zero padding, 8-aligned records
    ctx = next(e for e in summary if e["type"] == "HVM_CONTEXT")
    nxt = summary[summary.index(ctx) + 1]
    assert nxt["offset"] - ctx["offset"] == 8 + len(blob) + (-len(blob) % 8)
    assert records_of(data)[-3] == HvmContext(blob)


def test_independent_reader_can_fail() -> None:
    """The checker is stricter than pyxen's reader, which ignores padding (as the spec
    says a restorer must): non-zero padding passes one and fails the other."""
    data = bytearray(image([], blob=hvm_blob(3)))
    off = next(e for e in check_stream(io.BytesIO(bytes(data))) if e["type"] == "HVM_CONTEXT")
    end_of_body = off["offset"] + 8 + off["length"]
    data[end_of_body] = 0x55
    records_of(bytes(data))
    with pytest.raises(ImageError, match="padding is not zero"):
        check_stream(io.BytesIO(bytes(data)))


def test_version_2_image_without_static_data_end_is_read() -> None:
    data = bytearray(image([[1]]))
    at = data.index(b"XENF")
    data[at + 4:at + 8] = struct.pack(">I", 2)
    sde = data.index(struct.pack("<II", 0x10, 0), at)
    del data[sde:sde + 8]
    assert [type(r) for r in records_of(bytes(data))] == [PageData, TscInfo, HvmContext,
                                                          HvmParams, End]


# --- broken input: StreamError naming the place, never anything else -------------------------

def boundaries(data: bytes) -> list[tuple[int, str]]:
    return [(e["offset"], e["type"]) for e in check_stream(io.BytesIO(data))]


def test_truncated_anywhere() -> None:
    data = image([[0, 5], [9]], policies=True)
    cuts = set(range(0, 600)) | set(range(len(data) - 400, len(data)))
    cuts |= set(range(0, len(data), 61))
    for off, _ in boundaries(data):
        cuts |= {off - 1, off, off + 1, off + 7, off + 8, off + 9}
    for cut in sorted(c for c in cuts if 0 <= c < len(data)):
        with pytest.raises(StreamError) as e:
            read_all(data[:cut])
        msg = str(e.value)
        assert "offset" in msg and ("record" in msg or "header" in msg or
                                    "optional data" in msg), (cut, msg)


def test_truncated_at_a_record_boundary_names_the_missing_record() -> None:
    data = image([[0, 5], [9]])
    for off, _rtype in boundaries(data)[5:]:
        with pytest.raises(StreamError, match=rf"record \d+ at offset {off}: record header"):
            read_all(data[:off])
    with pytest.raises(StreamError, match=r"libxc record \d+ \(PAGE_DATA\) at offset \d+: truncated"):
        read_all(data[:boundaries(data)[7][0] - 100])


def flip(data: bytes, at: int, value: int) -> bytes:
    b = bytearray(data)
    b[at] = value
    return bytes(b)


def test_unknown_and_misplaced_record_types() -> None:
    data = image([[0, 5]])
    recs = boundaries(data)
    for off, name in recs[5:]:
        for value in (0x13, 0x77, 0x02, 0x07):  # unknown mandatory, x86 PV-only records
            if name == "END" and off == recs[-1][0] and value == 0x02:
                continue  # libxl's EMULATOR_XENSTORE_DATA: a valid type there (length 0 short)
            with pytest.raises(StreamError) as e:
                read_all(flip(data, off, value))
            assert f"at offset {off}" in str(e.value), (name, value, str(e.value))
    # libxc END turned into a second STATIC_DATA_END, libxl END into LIBXC_CONTEXT
    with pytest.raises(StreamError, match="a second STATIC_DATA_END"):
        read_all(flip(data, recs[-2][0], 0x10))
    with pytest.raises(StreamError, match="a second libxc stream"):
        read_all(flip(data, recs[-1][0], 0x01))
    with pytest.raises(StreamError, match="Remus/COLO"):
        read_all(flip(data, recs[-2][0], 0x0E))
    # the HVM context record made optional: skipped, as the spec says, then missed
    ctx = next(off for off, n in recs if n == "HVM_CONTEXT")
    with pytest.raises(StreamError, match="has no HVM_CONTEXT"):
        read_all(flip(data, ctx + 3, 0x80))


def test_flipped_length_bytes() -> None:
    data = image([[0, 5], [9]], policies=True)
    for off, name in boundaries(data)[5:]:
        for i in range(4):
            for value in (0x01, 0x7F, 0xFF):
                bad = flip(data, off + 4 + i, data[off + 4 + i] ^ value)
                with pytest.raises(StreamError) as e:
                    read_all(bad)
                assert "record" in str(e.value), (name, i, value)


def test_flipped_pfn_type_and_count() -> None:
    data = image([[0, 5]])
    pd = next(off for off, n in boundaries(data) if n == "PAGE_DATA")
    with pytest.raises(StreamError, match=r"PAGE_DATA\) at offset .*unrecognised page type"):
        read_all(flip(data, pd + 16 + 7, 0x50))  # type 5: reserved
    with pytest.raises(StreamError, match=r"PAGE_DATA.*1 pfns with 1 pages of data"):
        read_all(flip(data, pd + 8, 1))
    with pytest.raises(StreamError, match=r"page count 0"):
        read_all(flip(data, pd + 8, 0))
    xtab = flip(data, pd + 16 + 7, 0xF0)  # now an XTAB pfn with a page of data too many
    with pytest.raises(StreamError, match="need"):
        read_all(xtab)


def test_random_corruption_never_escapes_stream_error() -> None:
    import random
    rng = random.Random(9)
    data = image([[0, 5], [9, 1]], policies=True)
    for _ in range(900):
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[at] = rng.randrange(256)
            elif op == 1:
                del b[at:at + rng.randint(1, 16)]
            else:
                b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        try:
            read_all(bytes(b))
        except StreamError:
            pass


def test_huge_lengths_allocate_nothing() -> None:
    data = image([[0]])
    pd = next(off for off, n in boundaries(data) if n == "PAGE_DATA")
    bad = data[:pd + 4] + struct.pack("<I", 0xFFFFFFF8) + data[pd + 8:]
    tracemalloc.start()
    try:
        with pytest.raises(StreamError, match="more than a PAGE_DATA record can hold"):
            read_all(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    # the xl header's optional data length, and the config length inside it
    with pytest.raises(StreamError, match="corrupt savefile"):
        read_all(data[:44] + struct.pack("<I", 0xFFFFFFFF) + data[48:])
    with pytest.raises(StreamError, match="savefile truncated"):
        read_all(data[:48] + struct.pack("<I", 0xFFFFFF) + data[52:])
    # an optional record (bit 31) longer than any: refused before it is read
    end = boundaries(data)[-2][0]
    with pytest.raises(StreamError, match="optional 0x80000001"):
        read_all(data[:end] + struct.pack("<II", 0x80000001, 0xFFFFFFF0) + data[end:])


def test_optional_records_are_skipped() -> None:
    data = image([[0]])
    end = boundaries(data)[-2][0]
    extra = struct.pack("<II", 0x80000042, 5) + b"abcde\0\0\0"
    assert [type(r) for r in records_of(data[:end] + extra + data[end:])] == \
        [PageData, TscInfo, HvmContext, HvmParams, End]


def test_foreign_files() -> None:
    data = image([[0]])
    with pytest.raises(StreamError, match="wrong magic number"):
        read_all(b"\x7fELF" + bytes(100))
    with pytest.raises(StreamError, match="truncated"):
        read_all(b"")
    with pytest.raises(StreamError, match="wrong byte order"):
        read_all(data[:32] + b"\x01\x02\x03\x04" + data[36:])
    with pytest.raises(StreamError, match=r"mandatory flag\(s\) 0x4 .*need newer xl"):
        read_all(data[:36] + struct.pack("<I", 7) + data[40:])
    with pytest.raises(StreamError, match="legacy"):
        read_all(data[:36] + struct.pack("<I", 1) + data[40:])
    cfg_at = 52
    with pytest.raises(StreamError, match="not valid JSON"):
        read_all(data[:cfg_at] + b"[" + data[cfg_at + 1:])
    lx = data.index(b"LibxlFmt")
    with pytest.raises(StreamError, match="libxl stream header .*not \"LibxlFmt\""):
        read_all(data[:lx] + b"Libxlfmt" + data[lx + 8:])
    with pytest.raises(StreamError, match="stream version 3"):
        read_all(data[:lx + 8] + struct.pack(">I", 3) + data[lx + 12:])
    with pytest.raises(StreamError, match="big-endian"):
        read_all(data[:lx + 12] + struct.pack(">I", 1) + data[lx + 16:])
    xc = data.index(b"XENF") - 8
    with pytest.raises(StreamError, match="not a libxc domain image"):
        read_all(data[:xc] + bytes(8) + data[xc + 8:])
    with pytest.raises(StreamError, match="version 4 is not supported"):
        read_all(data[:xc + 12] + struct.pack(">I", 4) + data[xc + 16:])
    with pytest.raises(StreamError, match="big-endian"):
        read_all(data[:xc + 16] + struct.pack(">H", 1) + data[xc + 18:])
    dh = xc + 24
    with pytest.raises(StreamError, match="x86 PV domain"):
        read_all(data[:dh] + struct.pack("<I", 1) + data[dh + 4:])
    with pytest.raises(StreamError, match="page_shift 16"):
        read_all(data[:dh + 4] + struct.pack("<H", 16) + data[dh + 6:])
    # a libxl stream that ends before its libxc part
    with pytest.raises(StreamError, match="no LIBXC_CONTEXT"):
        read_all(data[:lx + 16] + struct.pack("<II", 0, 0))


def test_order_within_the_libxc_stream() -> None:
    data = image([[0]], policies=True)
    recs = boundaries(data)
    sde = next(off for off, n in recs if n == "STATIC_DATA_END")
    # drop STATIC_DATA_END from a version 3 image
    with pytest.raises(StreamError, match=r"PAGE_DATA\).*before STATIC_DATA_END"):
        read_all(data[:sde] + data[sde + 8:])
    # a CPUID policy after it
    pol = data[recs[5][0]:recs[6][0]]
    with pytest.raises(StreamError, match="static data record after STATIC_DATA_END"):
        read_all(data[:sde + 8] + pol + data[sde + 8:])


# --- the writer ------------------------------------------------------------------------------

def test_writer_refuses_misuse() -> None:
    w = SaveWriter(io.BytesIO(), CONFIG)
    with pytest.raises(RuntimeError):
        w.page_data([0], page(0))
    w.begin()
    with pytest.raises(ValueError, match="1 to 1024"):
        w.page_data(list(range(1025)), bytes(1025 * 4096))
    with pytest.raises(ValueError, match="needs 2 pages"):
        w.page_data([0, 1], page(0))
    with pytest.raises(ValueError, match="52 bits"):
        w.page_data([1 << 52], page(0))
    w.page_data([0], page(0))
    with pytest.raises(RuntimeError):
        w.cpuid_policy([(0, 0, 0, 0, 0, 0)])
    w.hvm_context(hvm_blob())
    with pytest.raises(RuntimeError, match="page_data"):
        w.page_data([1], page(1))
    w.finish()
    with pytest.raises(RuntimeError):
        w.finish()


def test_write_to_a_full_disk_is_a_stream_error() -> None:
    with open("/dev/full", "wb", buffering=0) as f:
        w = SaveWriter(f, CONFIG)
        with pytest.raises(StreamError, match="No space left on device"):
            w.begin()
            w.page_data([0], page(0))
            w.tsc_info(0, 0, 0, 0)
            w.hvm_context(hvm_blob())
            w.finish()


def test_hvm_context_framing() -> None:
    """The blob is Xen's HVM save format: HEADER first, END last, lengths chained."""
    good = hvm_blob(4)
    data = image([[0]], blob=good)
    ctx = next(off for off, n in boundaries(data) if n == "HVM_CONTEXT")
    body = ctx + 8
    with pytest.raises(StreamError, match=r"HVM_CONTEXT\) at offset \d+: HVM context starts "
                                          "with typecode 2"):
        read_all(flip(data, body, 2))
    with pytest.raises(StreamError, match="past the blob"):
        read_all(flip(data, body + 32 + 4, 0xFF))  # the LAPIC entry's length
    with pytest.raises(StreamError, match="not the empty last entry"):
        read_all(flip(data, body + 32, 0))  # the LAPIC entry made an END, mid-blob
    w = SaveWriter(io.BytesIO(), CONFIG)
    w.begin()
    with pytest.raises(ValueError, match="no END"):
        w.hvm_context(good[:-8])


def test_page_runs() -> None:
    pfns, types = [4, 5, 6, 9, 10, 2, 3], [0, 0, 0xF, 0, 0, 0, 0]
    data = b"".join(page(p) for p, t in zip(pfns, types, strict=True) if t != 0xF)
    rec = PageData(pfns, types, data)
    runs = [(p, bytes(v)) for p, v in rec.runs()]
    assert runs == [(4, page(4) + page(5)), (9, page(9) + page(10)), (2, page(2) + page(3))]
    assert [(p, bytes(v)) for p, v in rec.pages()] == \
        [(p, page(p)) for p in (4, 5, 9, 10, 2, 3)]


def test_header_read_leaves_a_raw_fd_at_the_libxl_stream(tmp_path) -> None:
    """hostd reads the xl header, then hands the descriptor on: nothing read ahead."""
    from pyxen.toolstack.migration import savefile
    from pyxen.toolstack.migration.wire import Input
    f = tmp_path / "img"
    data = image([[1]])
    f.write_bytes(data)
    with open(f, "rb", buffering=0) as raw:
        hdr = savefile.read(Input(raw))
        assert hdr.config == CONFIG
        pos = raw.tell()
        assert data[pos:pos + 8] == b"LibxlFmt"
        _, recs = read_image(raw, xl_header=False)
    assert isinstance(recs[-1], End)


def test_deeply_nested_config_is_a_stream_error() -> None:
    from pyxen.toolstack.migration import savefile
    deep = b"[" * 200000 + b"]" * 200000 + b"\0"
    hdr = struct.pack("<32sIIII", savefile.MAGIC, 0x01020304, 3, 0, 4 + len(deep))
    with pytest.raises(StreamError, match="not valid JSON"):
        read_all(hdr + struct.pack("<I", len(deep)) + deep)


def test_a_silent_peer_is_a_stream_error_not_a_hang() -> None:
    """Over a socket with a timeout (as migration uses), a peer that stops sending mid
    record gives StreamError naming the record."""
    import socket
    data = image([[0, 1]])
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data[:700])  # inside the first PAGE_DATA
        b.settimeout(0.5)
        with b.makefile("rb") as f, pytest.raises(StreamError,
                                                 match=r"PAGE_DATA\).*timed out"):
            read_image(f)


def test_emulator_records_are_decoded() -> None:
    """A stream from a Xen HVM guest with a device model carries emulator records after
    libxc's END: handed up, the restorer decides (pyxen writes none)."""
    from pyxen.toolstack.migration import EmulatorData
    from pyxen.toolstack.migration import libxl_stream as xl
    data = image([[0]])
    end = boundaries(data)[-1][0]
    xs = xl.emulator_record(xl.REC_TYPE_EMULATOR_XENSTORE_DATA, 2, 0,
                            xl.xenstore_data({"physmap/1/size": "800", "state": "running"}))
    ctx = xl.emulator_record(xl.REC_TYPE_EMULATOR_CONTEXT, 2, 0, b"QEVM" + bytes(9))
    image_ = data[:end] + xs + ctx + data[end:]
    recs = records_of(image_)
    assert recs[-3] == EmulatorData(2, 0, xl.xenstore_data(
        {"physmap/1/size": "800", "state": "running"}),
        {"physmap/1/size": "800", "state": "running"})
    assert recs[-2] == EmulatorData(2, 0, b"QEVM" + bytes(9))
    assert [e["type"] for e in check_stream(io.BytesIO(image_))][-3:] == [
        "EMULATOR_XENSTORE_DATA", "EMULATOR_CONTEXT", "END"]
    bad = xl.emulator_record(xl.REC_TYPE_EMULATOR_XENSTORE_DATA, 2, 0, b"key\0")
    with pytest.raises(StreamError, match=r"EMULATOR_XENSTORE_DATA\).*key without a value"):
        read_all(data[:end] + bad + data[end:])


def test_what_the_spec_reader_accepts_pyxen_reads_alike() -> None:
    """Differential: on corrupted images, whenever the independent (stricter) reader
    accepts, pyxen's reader must accept too and see the same pfns and state."""
    import random
    rng = random.Random(4)
    data = image([[0, 5], [9, 1]], policies=True)
    accepted = 0
    for _ in range(1500):
        b = bytearray(data)
        b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            summary = check_stream(io.BytesIO(bytes(b)))
        except ImageError:
            continue
        accepted += 1
        _, recs = read_all(bytes(b))
        assert [r.pfns for r in recs if isinstance(r, PageData)] == \
            [e["pfns"] for e in summary if e["type"] == "PAGE_DATA"]
        # (a record whose type became optional is skipped by both)
        assert [TscInfo(e["mode"], e["khz"], e["nsec"], e["incarnation"])
                for e in summary if e["type"] == "X86_TSC_INFO"] == \
            [r for r in recs if isinstance(r, TscInfo)]
        assert [e["params"] for e in summary if e["type"] == "HVM_PARAMS"] == \
            [r.params for r in recs if isinstance(r, HvmParams)]
    assert accepted > 100  # most flips land in page contents, which no reader can check
