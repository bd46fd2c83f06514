"""A whole xl save image / migration stream, written and read in Xen's order.

    [xl save-file header + domain_config JSON]       (savefile.py; xl_header=True)
    libxl header, LIBXC_CONTEXT                      (libxl_stream.py)
      libxc image header, domain header (x86 HVM)    (libxc_stream.py)
      [X86_CPUID_POLICY] [X86_MSR_POLICY] STATIC_DATA_END
      PAGE_DATA ... (live migration: many rounds, pfns resent)
      X86_TSC_INFO, HVM_PARAMS, HVM_CONTEXT
      END                                            (libxc's)
    END                                              (libxl's)

The reader checks framing, lengths and order as it goes and raises StreamError naming
the record; records it yields are decoded and self-consistent, but what they mean (a pfn
within the domain's memory, an HVM context that loads) is the restorer's to check.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from . import libxc_stream as xc
from . import libxl_stream as xl
from . import savefile
from .errors import StreamError
from .wire import Input, Output, RawRecord

# --- records as the reader yields them --------------------------------------------------

@dataclass
class PageData:
    """One PAGE_DATA record: ``data`` holds, in order, the pages of the pfns whose type
    carries data (NOTAB and the page-table types); XTAB/XALLOC/BROKEN pfns have none.
    The reader gives a read-only memoryview into the record (no copy); compare it with
    bytes as bytes, or copy it out with bytes()."""

    pfns: list[int]
    types: list[int]
    data: bytes | memoryview

    def pages(self) -> Iterator[tuple[int, memoryview]]:
        """(pfn, 4096-octet view) for each page that has data."""
        view = memoryview(self.data)
        i = 0
        for pfn, t in zip(self.pfns, self.types, strict=True):
            if t not in xc.PFINFO_NO_DATA:
                yield pfn, view[i:i + xc.PAGE_SIZE]
                i += xc.PAGE_SIZE


    def runs(self) -> Iterator[tuple[int, memoryview]]:
        """(first pfn, view of n pages) for each run of consecutive pfns with data: one
        copy per run into guest memory instead of one per page."""
        view = memoryview(self.data)
        i = 0
        start = prev = -2
        begin = 0
        for pfn, t in zip(self.pfns, self.types, strict=True):
            if t in xc.PFINFO_NO_DATA:
                continue
            if pfn != prev + 1:
                if start >= 0:
                    yield start, view[begin:i]
                start, begin = pfn, i
            prev = pfn
            i += xc.PAGE_SIZE
        if start >= 0:
            yield start, view[begin:i]


@dataclass
class TscInfo:
    mode: int
    khz: int
    nsec: int
    incarnation: int


@dataclass
class HvmContext:
    blob: bytes


@dataclass
class HvmParams:
    params: dict[int, int]


@dataclass
class CpuidPolicy:
    leaves: list[tuple[int, ...]]  # (leaf, subleaf, eax, ebx, ecx, edx)


@dataclass
class MsrPolicy:
    entries: list[tuple[int, ...]]  # (index, flags, value)


@dataclass
class EmulatorData:
    """An EMULATOR_XENSTORE_DATA or EMULATOR_CONTEXT record (domains with a device
    model; pyxen writes none): ``xenstore`` is set for the former."""

    emulator_id: int
    index: int
    data: bytes
    xenstore: dict[str, str] | None = None


@dataclass
class End:
    """libxl's END: the image is complete."""


Record = PageData | TscInfo | HvmContext | HvmParams | CpuidPolicy | MsrPolicy | \
    EmulatorData | End


# --- writing -------------------------------------------------------------------------------

class SaveWriter:
    """Writes one xl save image / migration stream onto a binary file object.

    Call begin(), then any number of page_data() (the same pfn may be sent again, as live
    migration resends dirtied pages), then tsc_info(), hvm_context(), hvm_params() (Xen's
    order; page_data() after them is refused), then finish(). cpuid_policy()/msr_policy() (optional) go before the first page_data().
    Write failures (disk full, a dropped connection) raise StreamError from the OSError.
    """

    def __init__(self, out: BinaryIO, domain_config: dict[str, Any], *,
                 xl_header: bool = True) -> None:
        self._out = Output(out)
        self.domain_config = domain_config
        self.xl_header = xl_header
        self._state = "new"  # new -> static -> body -> done
        self.pages_written = 0
        self.records_written = 0

    @property
    def bytes_written(self) -> int:
        return self._out.offset

    def _need(self, *states: str, what: str) -> None:
        if self._state not in states:
            raise RuntimeError(f"SaveWriter.{what}() called in state {self._state!r}")

    def _body(self, what: str, state: str = "body") -> None:
        """Records after the static data: emit STATIC_DATA_END on the first one. The
        domain state records (TSC, HVM params and context) come after all PAGE_DATA, as
        Xen's saver writes them."""
        if state == "body":
            self._need("static", "body", what=what)
        else:
            self._need("static", "body", "state", what=what)
        if self._state == "static":
            self._out.write(xc.static_data_end())
            self.records_written += 1
        self._state = state

    def begin(self) -> None:
        self._need("new", what="begin")
        if self.xl_header:
            savefile.write(self._out, self.domain_config)
        self._out.write(xl.header() + xl.libxc_context() + xc.image_header()
                        + xc.domain_header())
        self.records_written += 1
        self._state = "static"

    def cpuid_policy(self, leaves: Sequence[tuple[int, int, int, int, int, int]]) -> None:
        self._need("static", what="cpuid_policy")
        self._out.write(xc.cpuid_policy(leaves))
        self.records_written += 1

    def msr_policy(self, entries: Sequence[tuple[int, int, int]]) -> None:
        self._need("static", what="msr_policy")
        self._out.write(xc.msr_policy(entries))
        self.records_written += 1

    def page_data(self, pfns: Sequence[int], pages: bytes | memoryview, *,
                  types: Sequence[int] | None = None) -> None:
        """One PAGE_DATA record: up to 1024 pfns and their pages, 4096 octets each, in
        pfn order as given. ``types`` (XEN_DOMCTL_PFINFO_*, default all NOTAB) lets a
        caller send XTAB pfns, which carry no data."""
        self._body("page_data")
        view = memoryview(pages).cast("B")
        npages = len(pfns) if types is None else \
            sum(1 for t in types if t not in xc.PFINFO_NO_DATA)
        if view.nbytes != npages * xc.PAGE_SIZE:
            raise ValueError(f"PAGE_DATA of {len(pfns)} pfns needs {npages} pages of "
                             f"{xc.PAGE_SIZE} octets, got {view.nbytes} octets")
        self._out.write(xc.page_data_header(pfns, types, npages))
        if npages:
            self._out.write(view)
        self.pages_written += npages
        self.records_written += 1

    def tsc_info(self, mode: int, khz: int, nsec: int, incarnation: int) -> None:
        self._body("tsc_info", "state")
        self._out.write(xc.tsc_info(mode, khz, nsec, incarnation))
        self.records_written += 1

    def hvm_params(self, params: dict[int, int]) -> None:
        self._body("hvm_params", "state")
        if params:  # the spec: data records with no content are elided
            self._out.write(xc.hvm_params(params))
            self.records_written += 1

    def hvm_context(self, blob: bytes) -> None:
        try:  # a malformed blob is the caller's bug: refuse it before writing anything
            xc.check_hvm_context(RawRecord(xc.REC_TYPE_HVM_CONTEXT, "HVM_CONTEXT",
                                           bytes(blob), self.records_written,
                                           self.bytes_written, "libxc"))
        except StreamError as e:
            raise ValueError(str(e)) from None
        self._body("hvm_context", "state")
        self._out.write(xc.hvm_context(blob))
        self.records_written += 1

    def flush(self) -> None:
        self._out.flush()

    def finish(self) -> None:
        self._body("finish", "state")
        self._out.write(xc.end() + xl.end())
        self.records_written += 2
        self._state = "done"
        self._out.flush()


# --- reading -------------------------------------------------------------------------------

@dataclass
class _Seen:
    static_end: bool = False
    hvm_context: bool = False
    pages: int = 0
    extra: list[EmulatorData] = field(default_factory=list)


class SaveReader:
    """Reads one image: begin() checks the headers and returns the domain_config (an
    empty dict when the file carries none), records() yields the decoded records up to
    and including End. Nothing beyond libxl's END is read (a migration connection goes on
    with xl's own messages). Readers of records() should skip record classes they do not
    handle (CpuidPolicy, MsrPolicy, EmulatorData)."""

    def __init__(self, inp: BinaryIO, *, xl_header: bool = True) -> None:
        self._in = Input(inp)
        self.xl_header = xl_header
        self.header: savefile.SaveFileHeader | None = None
        self.image: xc.ImageInfo | None = None
        self._index = 0
        self._seen = _Seen()
        self._state = "new"

    @property
    def offset(self) -> int:
        """Octets consumed so far."""
        return self._in.offset

    @property
    def pages_read(self) -> int:
        return self._seen.pages

    def _next_index(self) -> int:
        i = self._index
        self._index += 1
        return i

    def begin(self) -> dict[str, Any]:
        if self._state != "new":
            raise RuntimeError("SaveReader.begin() called twice")
        self._state = "libxc"
        config: dict[str, Any] = {}
        if self.xl_header:
            self.header = savefile.read(self._in)
            config = self.header.config or {}
        xl.read_header(self._in)
        while True:  # libxl records up to LIBXC_CONTEXT
            rec = xl.read(self._in, self._next_index())
            if rec.type == xl.REC_TYPE_LIBXC_CONTEXT:
                break
            if rec.type == xl.REC_TYPE_END:
                raise rec.error("the stream ends before any domain state (no LIBXC_CONTEXT)")
            if rec.type in (xl.REC_TYPE_EMULATOR_CONTEXT, xl.REC_TYPE_EMULATOR_XENSTORE_DATA):
                self._seen.extra.append(self._emulator(rec))
            # an unknown optional record: skipped
        self.image = xc.read_headers(self._in)
        return config

    def _emulator(self, rec: Any) -> EmulatorData:
        emu, index, data = xl.decode_emulator(rec)
        if rec.type == xl.REC_TYPE_EMULATOR_XENSTORE_DATA:
            return EmulatorData(emu, index, data, xl.decode_xenstore_data(rec, data))
        return EmulatorData(emu, index, data)

    def records(self) -> Iterator[Record]:
        if self._state == "new":
            raise RuntimeError("SaveReader.records() before begin()")
        if self._state == "done":
            return
        yield from self._seen.extra
        self._seen.extra.clear()
        seen = self._seen
        assert self.image is not None
        v2 = self.image.version < 3  # v2: STATIC_DATA_END is implied by the first PAGE_DATA
        while self._state == "libxc":
            rec = xc.read(self._in, self._next_index())
            t = rec.type
            if t in xc.STATIC_RECORDS:
                if seen.static_end:
                    raise rec.error("static data record after STATIC_DATA_END")
            elif t == xc.REC_TYPE_STATIC_DATA_END:
                if seen.static_end:
                    raise rec.error("a second STATIC_DATA_END")
                seen.static_end = True
                continue
            elif t & 0x8000_0000:
                continue  # an optional record this reader does not know: ignored
            elif not seen.static_end:
                if not v2:
                    raise rec.error("memory or register record before STATIC_DATA_END "
                                    "(required in a version 3 image)")
                seen.static_end = True
            if t == xc.REC_TYPE_PAGE_DATA:
                pfns, types, data = xc.decode_page_data(rec)
                seen.pages += len(data) // xc.PAGE_SIZE
                yield PageData(pfns, types, data)
            elif t == xc.REC_TYPE_X86_TSC_INFO:
                yield TscInfo(*xc.decode_tsc_info(rec))
            elif t == xc.REC_TYPE_HVM_CONTEXT:
                xc.check_hvm_context(rec)
                seen.hvm_context = True
                yield HvmContext(rec.body)
            elif t == xc.REC_TYPE_HVM_PARAMS:
                params = xc.decode_hvm_params(rec)
                if params:
                    yield HvmParams(params)
            elif t == xc.REC_TYPE_X86_CPUID_POLICY:
                yield CpuidPolicy(xc.decode_cpuid_policy(rec))
            elif t == xc.REC_TYPE_X86_MSR_POLICY:
                yield MsrPolicy(xc.decode_msr_policy(rec))
            elif t == xc.REC_TYPE_END:
                if not seen.hvm_context:
                    raise rec.error("the image has no HVM_CONTEXT record")
                self._state = "libxl"
            else:  # pragma: no cover - xc.read refuses every other type
                raise rec.error("unexpected record")
        while self._state == "libxl":
            rec = xl.read(self._in, self._next_index())
            if rec.type == xl.REC_TYPE_END:
                self._state = "done"
                yield End()
            elif rec.type in (xl.REC_TYPE_EMULATOR_CONTEXT,
                              xl.REC_TYPE_EMULATOR_XENSTORE_DATA):
                yield self._emulator(rec)
            elif rec.type == xl.REC_TYPE_LIBXC_CONTEXT:
                raise rec.error("a second libxc stream: checkpointed streams (Remus/COLO) "
                                "are not supported")
            # unknown optional records: skipped


def read_image(inp: BinaryIO, *, xl_header: bool = True) -> tuple[dict[str, Any],
                                                                   list[Record]]:
    """The whole image in memory (tests, small images): config and records."""
    reader = SaveReader(inp, xl_header=xl_header)
    config = reader.begin()
    return config, list(reader.records())


__all__ = ["SaveWriter", "SaveReader", "StreamError", "Record", "PageData", "TscInfo",
           "HvmContext", "HvmParams", "CpuidPolicy", "MsrPolicy", "EmulatorData", "End",
           "read_image"]
