"""blkback's ring parsing for both blkif ABIs, against the ctypes mirrors of xen/io/blkif.h
(themselves checked against the C headers, -m64 and -m32, by tests/test_abi_layout.py),
and the ring arithmetic over non-contiguous pages. Pure logic: no guest needed."""

from __future__ import annotations

import ctypes

import pytest

from pyxen.backends import blkback as BB
from pyxen.hypervisor.public.io import blkif as B

ABIS = [(BB.ABI_X86_64, B.blkif_request, B.blkif_request_discard, B.blkif_request_indirect,
         B.blkif_response, False),
        (BB.ABI_X86_32, B.compat_blkif_request, B.compat_blkif_request_discard,
         B.compat_blkif_request_indirect, B.compat_blkif_response, True)]


@pytest.mark.parametrize(("abi", "req", "disc", "ind", "rsp", "compat"), ABIS)
def test_struct_formats_match_the_mirrors(abi, req, disc, ind, rsp, compat) -> None:  # noqa: ANN001
    assert abi.entry == B.ring_entry_size(compat)
    assert abi.rsp.size == ctypes.sizeof(rsp)
    assert abi.seg_off == req.seg.offset
    r = req(operation=B.BLKIF_OP_WRITE, nr_segments=2, handle=51712, id=0x1122334455667788,
            sector_number=0xABCDEF0123)
    r.seg[0].gref, r.seg[0].first_sect, r.seg[0].last_sect = 9, 1, 7
    r.seg[1].gref, r.seg[1].first_sect, r.seg[1].last_sect = 10, 0, 3
    op, rid, parsed = BB.parse_request(bytes(r), abi)
    assert (op, rid) == (B.BLKIF_OP_WRITE, 0x1122334455667788)
    assert parsed is not None and parsed.sector == 0xABCDEF0123
    assert parsed.segs == [(9, 1, 7), (10, 0, 3)]
    d = disc(operation=B.BLKIF_OP_DISCARD, flag=1, handle=3, id=77, sector_number=100,
             nr_sectors=8)
    raw = bytes(d).ljust(abi.entry, b"\0")
    _, rid, parsed = BB.parse_request(raw, abi)
    assert rid == 77 and parsed is not None
    assert (parsed.sector, parsed.nr_sectors, parsed.flag) == (100, 8, 1)
    i = ind(operation=B.BLKIF_OP_INDIRECT, indirect_op=B.BLKIF_OP_READ, nr_segments=200,
            id=5, sector_number=64, handle=1)
    i.indirect_grefs[0], i.indirect_grefs[1] = 40, 41
    _, rid, parsed = BB.parse_request(bytes(i).ljust(abi.entry, b"\0"), abi)
    assert rid == 5 and parsed is not None and parsed.op == B.BLKIF_OP_READ
    assert parsed.indirect == (200, (40,))  # 200 segments fit one indirect page
    resp = rsp.from_buffer_copy(abi.rsp.pack(0x55, B.BLKIF_OP_READ, B.BLKIF_RSP_ERROR))
    assert (resp.id, resp.operation, resp.status) == (0x55, 0, -1)


@pytest.mark.parametrize("abi", [BB.ABI_X86_64, BB.ABI_X86_32])
def test_malformed_requests_keep_their_id(abi: BB.RingAbi) -> None:
    r = bytearray(abi.entry)
    abi.req.pack_into(r, 0, B.BLKIF_OP_READ, 12, 0, 99, 0)  # 12 > 11 segments
    assert BB.parse_request(bytes(r), abi) == (B.BLKIF_OP_READ, 99, None)
    abi.indirect.pack_into(r, 0, B.BLKIF_OP_INDIRECT, B.BLKIF_OP_WRITE, 257, 98, 0, 0,
                           *([0] * 8))  # more than feature-max-indirect-segments
    assert BB.parse_request(bytes(r), abi)[1:] == (98, None)
    abi.indirect.pack_into(r, 0, B.BLKIF_OP_INDIRECT, B.BLKIF_OP_DISCARD, 1, 97, 0, 0,
                           *([0] * 8))  # indirect discard does not exist
    assert BB.parse_request(bytes(r), abi)[1:] == (97, None)


@pytest.mark.parametrize(("pages", "compat", "size"), [(1, False, 32), (1, True, 32),
                                                       (4, False, 128), (16, True, 512)])
def test_ring_sizes_as_ring_h(pages: int, compat: bool, size: int) -> None:
    abi = BB.ABI_X86_32 if compat else BB.ABI_X86_64
    assert BB.ring_size(pages, abi) == B.ring_size(pages, compat) == size


def test_entries_straddling_pages_of_a_multi_page_ring() -> None:
    """Slot 72 of an x86_64 ring spans pages 1 and 2 (64 + 72 * 112 = 8128): reads and
    responses must follow the pages, which need not be adjacent in memory."""
    abi = BB.ABI_X86_64
    pages = [memoryview(bytearray(4096)) for _ in range(4)]
    ring = BB.SharedRing(pages, abi)
    assert ring.size == 128
    r = B.blkif_request(operation=B.BLKIF_OP_READ, nr_segments=1, id=4242, sector_number=7)
    r.seg[0].gref, r.seg[0].last_sect = 33, 7
    blob = bytes(r)
    off = 64 + 72 * abi.entry
    cut = 8192 - off
    pages[1][off - 4096:] = blob[:cut]
    pages[2][:len(blob) - cut] = blob[cut:]
    _, rid, parsed = BB.parse_request(ring.read_entry(72 + 128), abi)  # indices wrap
    assert rid == 4242 and parsed is not None and parsed.segs == [(33, 0, 7)]
    ring.write_response(72, 4242, B.BLKIF_OP_READ, B.BLKIF_RSP_OKAY)
    assert abi.rsp.unpack(bytes(pages[1][off - 4096:off - 4096 + 16])) == (4242, 0, 0)
    pages[0][:4] = (5).to_bytes(4, "little")
    assert ring.hdr[0] == 5  # req_prod, read through the header view
