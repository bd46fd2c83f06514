"""Grant table v2 and the maptrack, as pure logic on real guest memory (a memfd) without
KVM. The same behaviour with real guests is in test_guest_gnttab.py."""

from __future__ import annotations

import ctypes

import pytest

from pyxen.hypervisor.domain import Domain
from pyxen.hypervisor.grant_table import (
    GrantError,
    GrantTable,
    HostMapping,
    Maptrack,
    grant_to_status_frames,
    status_to_grant_frames,
)
from pyxen.hypervisor.memory import GuestMemory
from pyxen.hypervisor.public import errno as E
from pyxen.hypervisor.public import grant_table as G

PAGE = 0x200


@pytest.fixture
def dom() -> Domain:
    return Domain(domid=7, name="t", memory=GuestMemory(4 << 20), max_vcpus=1,
                  max_memory=4 << 20)


def grant_v1(gt: GrantTable, ref: int, domid: int, gfn: int, flags: int) -> None:
    e = gt.read_entry(ref)
    e.domid, e.frame = domid, gfn
    e.flags = flags


def grant_v2(gt: GrantTable, ref: int, domid: int, gfn: int, flags: int,
             page_off: int = 0, length: int = 0) -> None:
    e = gt.read_entry_v2(ref)
    e.full_page.frame = gfn
    if flags & G.GTF_sub_page:
        e.sub_page.page_off, e.sub_page.length = page_off, length
    e.hdr.domid = domid
    e.hdr.flags = flags


def test_status_frame_arithmetic() -> None:
    assert grant_to_status_frames(1) == 1  # 256 entries need 512 bytes of status
    assert grant_to_status_frames(8) == 1 and grant_to_status_frames(9) == 2
    assert status_to_grant_frames(1) == 8 and status_to_grant_frames(9) == 72


def test_v2_status_words_sub_page_and_transitive(dom: Domain) -> None:
    gt = GrantTable(dom)
    assert gt.set_version(2) == 0 and len(gt.status) == 1 and gt.nr_entries == 256
    dom.memory.write(PAGE << 12, b"v2 page")
    grant_v2(gt, 9, 0, PAGE, G.GTF_permit_access)
    m = gt.map(9)
    assert bytes(m.buf[:7]) == b"v2 page"
    # the status word, not the entry, carries reading/writing
    assert gt.read_status(9) == G.GTF_reading | G.GTF_writing
    assert gt.read_entry_v2(9).hdr.flags == G.GTF_permit_access
    gt.unmap(m)
    assert gt.read_status(9) == 0
    # sub-page: copies within the window only, never mapped
    grant_v2(gt, 10, 0, PAGE, G.GTF_permit_access | G.GTF_sub_page, 3, 4)
    assert gt.copy_from(10, 3, 4) == b"page"
    for off, n, st in ((2, 4, G.GNTST_general_error), (3, 5, G.GNTST_general_error),
                       (4090, 9, G.GNTST_bad_copy_arg)):
        with pytest.raises(GrantError) as e:
            gt.copy_from(10, off, n)
        assert e.value.status == st
    with pytest.raises(GrantError) as e:
        gt.map(10, readonly=True)
    assert e.value.status == G.GNTST_general_error
    assert gt.read_status(10) == 0
    # transitive: refused, status undone
    e2 = gt.read_entry_v2(11)
    e2.transitive.trans_domid, e2.transitive.gref = 7, 9
    e2.hdr.domid, e2.hdr.flags = 0, G.GTF_transitive
    for op in (lambda: gt.copy_from(11, 0, 4), lambda: gt.map(11, readonly=True)):
        with pytest.raises(GrantError) as e:
            op()
        assert e.value.status == G.GNTST_general_error
        assert gt.read_status(11) == 0
    # read-only entry: no writable pin, nothing left in the status word
    grant_v2(gt, 12, 0, PAGE, G.GTF_permit_access | G.GTF_readonly)
    with pytest.raises(GrantError):
        gt.map(12)
    assert gt.read_status(12) == 0


def test_set_version_rules(dom: Domain) -> None:
    gt = GrantTable(dom)
    assert gt.set_version(1) == 0
    grant_v1(gt, 1, 0, PAGE, G.GTF_permit_access | G.GTF_readonly)
    grant_v1(gt, 8, 0, PAGE, G.GTF_permit_access)
    held = gt.map(1, readonly=True)  # a reserved entry may stay mapped across the switch
    m = gt.map(8)
    assert gt.set_version(2) == -E.EBUSY and gt.version == 1
    gt.unmap(m)
    assert gt.set_version(2) == 0
    e = gt.read_entry_v2(1)
    assert (e.hdr.flags, e.hdr.domid, e.full_page.frame) == \
        (G.GTF_permit_access | G.GTF_readonly, 0, PAGE)
    assert gt.read_status(1) == G.GTF_reading  # the pin's bit moved to the status word
    assert gt.read_entry_v2(8).hdr.flags == 0  # the rest is cleared
    gt.unmap(held)
    assert gt.read_status(1) == 0
    grant_v2(gt, 2, 0, 1 << 32, G.GTF_permit_access)  # v1 cannot hold this frame
    assert gt.set_version(1) == -E.ERANGE and gt.version == 2
    grant_v2(gt, 2, 0, 0, G.GTF_transitive)
    assert gt.set_version(1) == -E.ERANGE
    gt.read_entry_v2(2).hdr.flags = G.GTF_invalid
    assert gt.set_version(1) == 0 and len(gt.status) == 0
    e1 = gt.read_entry(1)
    assert (e1.flags, e1.domid, e1.frame) == (G.GTF_permit_access | G.GTF_readonly, 0, PAGE)


def test_status_frames_grow_the_table(dom: Domain) -> None:
    gt = GrantTable(dom)
    # v1 has no status frames: the index is taken as a (far too big) shared frame
    assert gt.map_frame(G.XENMAPIDX_grant_table_status, 0x100) == -E.EINVAL
    gt.set_version(2)
    assert gt.map_frame(G.XENMAPIDX_grant_table_status | 1, 0x100) == 0
    assert gt.nr_frames == 16 and len(gt.status) == 2 and gt.status.gfns[1] == 0x100
    assert gt.map_frame(G.XENMAPIDX_grant_table_status | 8, 0x101) == -E.EINVAL
    assert gt.nr_frames == 16
    grant_v2(gt, 2048 + 5, 0, PAGE, G.GTF_permit_access)  # its status word is in frame 1
    m = gt.map(2048 + 5, readonly=True)
    assert dom.memory.read((0x100 << 12) + 10, 2) == bytes([G.GTF_reading, 0])
    gt.unmap(m)


def test_maptrack_limit_and_reuse() -> None:
    mt = Maptrack(max_frames=1)
    maps = [HostMapping(7, i, G.GNTMAP_host_map, 0, None) for i in range(257)]
    handles = [mt.get(m) for m in maps[:256]]
    assert handles == list(range(256))
    assert mt.get(maps[256]) is None  # Xen: GNTST_no_device_space
    mt.put(5)
    mt.put(3)
    assert mt.get(maps[256]) == 5 and len(mt) == 255


def test_swap_and_entries_stay_in_their_frames(dom: Domain) -> None:
    from pyxen.hypervisor.grant_table import _swap
    gt = GrantTable(dom)
    gt.set_version(2)
    grant_v2(gt, 20, 0, PAGE, G.GTF_permit_access)
    grant_v2(gt, 21, 0, PAGE + 1, G.GTF_permit_access | G.GTF_readonly)
    assert _swap(gt, 20, 21) == G.GNTST_okay
    assert gt.read_entry_v2(20).full_page.frame == PAGE + 1
    m = gt.map(21)
    assert _swap(gt, 20, 21) == G.GNTST_eagain
    assert _swap(gt, 20, 1 << 20) == G.GNTST_bad_gntref
    gt.unmap(m)
    assert ctypes.sizeof(G.grant_entry_v2) == G.GRANT_ENTRY_V2_SIZE


# --- the hypercall for a 32-bit caller (Xen's compat layer) -------------------------------


def call(dom: Domain, cmd: int, uop: int, count: int = 1, compat: bool = True) -> int:
    from pyxen.hypervisor.grant_table import do_grant_table_op
    from pyxen.hypervisor.guest_access import GuestAccess
    from pyxen.hypervisor.hypercall import HypercallContext
    ctx = HypercallContext(dom, dom.vcpus[0], (cmd, uop, count, 0, 0),
                           lambda: GuestAccess(dom.memory, lambda va, w: va, compat),
                           long_mode=not compat)
    return do_grant_table_op(ctx)


def test_compat_setup_table_copy_and_status_frames(dom: Domain) -> None:
    """x86_32 layouts: setup_table's frame_list has 4-byte xen_pfn_t elements,
    get_status_frames' list uint64_t ones; gnttab_copy is 24 bytes with 4-byte gmfns."""
    from pyxen.hypervisor.public.xen import DOMID_SELF
    dom.unpause()  # built paused; batched ops wait while a domain is paused
    dom.grant_table = gt = GrantTable(dom)
    arg, lst = 0x10000, 0x11000
    gt.map_frame(0, 0x300)
    op = G.compat_gnttab_setup_table(dom=DOMID_SELF, nr_frames=2, frame_list=lst)
    dom.memory.write(arg, bytes(op))
    assert call(dom, G.GNTTABOP_setup_table, arg) == 0
    got = G.compat_gnttab_setup_table.from_buffer_copy(dom.memory.read(arg, 16))
    assert got.status == G.GNTST_okay
    assert dom.memory.read(lst, 12) == (0x300).to_bytes(4, "little") + b"\xff" * 4 + b"\0" * 4

    gt.set_version(2)
    gt.map_frame(G.XENMAPIDX_grant_table_status, 0x301)
    op2 = G.compat_gnttab_get_status_frames(nr_frames=1, dom=DOMID_SELF, frame_list=lst)
    dom.memory.write(arg, bytes(op2))
    assert call(dom, G.GNTTABOP_get_status_frames, arg) == 0
    assert G.compat_gnttab_get_status_frames.from_buffer_copy(
        dom.memory.read(arg, 12)).status == G.GNTST_okay
    assert dom.memory.read(lst, 8) == (0x301).to_bytes(8, "little")

    # two copies in one call, 24 bytes apart: gmfn 0x302 -> grant 9 (to ourselves)
    dom.memory.write(0x302 << 12, b"compat copy")
    grant_v2(gt, 9, dom.domid, 0x303, G.GTF_permit_access)
    ops = (G.compat_gnttab_copy * 2)()
    for i, c in enumerate(ops):
        c.source.u.gmfn, c.source.domid, c.source.offset = 0x302, DOMID_SELF, 0
        c.dest.u.ref, c.dest.domid, c.dest.offset = 9, DOMID_SELF, 16 * i
        c.len, c.flags, c.status = 11, G.GNTCOPY_dest_gref, 0x77
    dom.memory.write(arg, bytes(ops))
    assert ctypes.sizeof(ops) == 48
    assert call(dom, G.GNTTABOP_copy, arg, count=2) == 0
    back = (G.compat_gnttab_copy * 2).from_buffer_copy(dom.memory.read(arg, 48))
    assert [c.status for c in back] == [G.GNTST_okay, G.GNTST_okay]
    assert dom.memory.read((0x303 << 12) + 16, 11) == b"compat copy"
    assert gt.read_status(9) == 0


def test_cache_flush_as_xen_x86(dom: Domain) -> None:
    dom.unpause()
    dom.grant_table = GrantTable(dom)
    arg = 0x10000

    def flush(bus: int, off: int, length: int, op: int, cmd_hi: int = 0) -> int:
        f = G.gnttab_cache_flush(offset=off, length=length, op=op)
        f.a.dev_bus_addr = bus
        dom.memory.write(arg, bytes(f))
        return call(dom, G.GNTTABOP_cache_flush | cmd_hi << 12, arg, compat=False)

    clean, inval = G.GNTTAB_CACHE_CLEAN, G.GNTTAB_CACHE_INVAL
    assert flush(0x200000, 0, 64, clean) == 0
    assert flush(0x200000, 0, 64, clean | inval) == 0
    assert flush(0x200000, 0, 64, inval) == -E.EOPNOTSUPP
    assert flush(0x200000, 4000, 200, clean) == -E.EINVAL          # beyond the page
    assert flush(0x200000, 0, 64, G.GNTTAB_CACHE_SOURCE_GREF | clean) == -E.EINVAL
    assert flush(1 << 50, 0, 64, clean) == -E.EINVAL               # no such frame
    assert flush(0x200000, 0, 0, clean) == 0                       # nothing to do
    assert flush(0x200000, 0, 0, clean, cmd_hi=5) == -84           # -EILSEQ
    assert call(dom, G.GNTTABOP_copy | 1 << 12, arg, compat=False) == -E.EINVAL
