"""The p2m's bookkeeping in isolation (hypervisor/p2m.py): placement, moves, accounting,
KVM slot use and exhaustion. The slot setter records what KVM would be told; what a guest
really sees through those slots is tested with real guests in test_vmm_memory.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyxen.hypervisor.guest_access import GuestFault
from pyxen.hypervisor.memory import GuestMemory
from pyxen.hypervisor.p2m import P2MError

HOLE = 0xFEFF0


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory(8 << 20, name="pyxen-test-p2m", max_size=12 << 20)
    m.slots = {}

    def set_slot(slot: int, gpa: int, size: int, hva: int) -> None:
        if size:
            assert slot not in m.slots
            m.slots[slot] = (gpa, size, hva)
        else:
            del m.slots[slot]

    m.p2m.attach(set_slot, max_slots=4)
    yield m
    m.close()


def test_windows_cover_maxmem_and_only_memory_is_ram(mem: GuestMemory) -> None:
    assert mem.slots == {0: (0, 12 << 20, mem.hva)}
    assert mem.tot_pages == 2048 and mem.max_pages == 3072
    assert mem.is_ram(0x7FF000) and not mem.is_ram(0x800000)
    with pytest.raises(GuestFault):
        mem.read(0x7FF000, 8192)  # runs into the unpopulated part


def test_page_placed_over_ram_frees_it_and_moves_leave_holes(mem: GuestMemory) -> None:
    page = mem.alloc_page()
    mem.view[page.offset:page.offset + 5] = b"hello"
    mem.write(0x5000, b"old data")
    mem.p2m.map_page(5, page)
    assert mem.read(0x5000, 5) == b"hello" and mem.tot_pages == 2047
    mem.p2m.map_page(HOLE, page)  # into the MMIO hole: its own slot
    assert mem.read(HOLE << 12, 5) == b"hello"
    assert mem.slots[1] == (HOLE << 12, 4096, mem.hva + page.offset)
    assert not mem.is_ram(0x5000)  # the old place is a hole, the RAM is not back
    assert mem.tot_pages == 2047 and mem.max_gpfn == HOLE
    mem.p2m.map_page(6, page)  # back over RAM: the slot goes, another RAM page is freed
    assert 1 not in mem.slots and not mem.is_ram(HOLE << 12) and mem.tot_pages == 2046
    assert mem.p2m.populate(5) and mem.read(0x5000, 8) == bytes(8)  # fresh, zeroed


def test_unmap_notifies_the_owner_unless_moved(mem: GuestMemory) -> None:
    seen = []
    page = mem.alloc_page("grant")
    page.on_unmap = lambda p, gfn: seen.append(gfn)
    mem.p2m.map_page(HOLE, page)
    mem.p2m.map_page(HOLE + 1, page)
    assert seen == []
    other = mem.alloc_page()
    mem.p2m.map_page(HOLE + 1, other)  # replaced
    assert seen == [HOLE + 1] and page.gfn is None and other.gfn == HOLE + 1
    assert mem.p2m.unmap(HOLE + 1) is other and mem.p2m.lookup(HOLE + 1) is None


def test_release_populate_and_orphans(mem: GuestMemory) -> None:
    assert mem.p2m.release(10) and not mem.p2m.release(10)  # second time: a hole
    assert mem.tot_pages == 2047
    assert mem.p2m.populate(3000) and mem.tot_pages == 2048  # inside the window, above RAM
    assert mem.p2m.populate(3000) and mem.tot_pages == 2049  # Xen orphans the old page
    assert mem.p2m.remove(11, free_ram=False) == "ram" and mem.tot_pages == 2049
    assert mem.p2m.lookup(11) is None


def test_moving_ram_with_gmfn(mem: GuestMemory) -> None:
    mem.write(0x7000, b"payload")
    assert mem.p2m.move_ram(7, HOLE) == 0
    assert mem.read(HOLE << 12, 7) == b"payload" and not mem.is_ram(0x7000)
    assert mem.tot_pages == 2048
    assert mem.p2m.move_ram(7, 8) == -22  # nothing at 7 any more


def test_slots_run_out_with_enomem_and_bad_gfns_with_einval(mem: GuestMemory) -> None:
    pages = [mem.alloc_page() for _ in range(4)]
    for i in range(3):  # slot 0 is the window; 4 in all
        mem.p2m.map_page(HOLE + i, pages[i])
    with pytest.raises(P2MError) as e:
        mem.p2m.map_page(HOLE + 3, pages[3])
    assert e.value.errno == 12
    mem.p2m.map_page(20, pages[3])  # over RAM needs no slot
    with pytest.raises(P2MError) as e:
        mem.p2m.map_page(mem.p2m.max_gfn + 1, pages[3])
    assert e.value.errno == 22
    mem.free_page(pages[0])
    assert mem.p2m.lookup(HOLE) is None and len(mem.slots) == 3


def test_memory_op_for_a_32bit_caller() -> None:
    """The compat layouts on real guest memory: a flat 32-bit caller's reservation (4-byte
    xen_pfn_t extents), memory map and add_to_physmap, through the real dispatcher."""
    import struct

    from pyxen.arch.x86.paging import PagingState, translate
    from pyxen.hypervisor import hypercall as HC
    from pyxen.hypervisor.domain import Domain
    from pyxen.hypervisor.guest_access import GuestAccess
    from pyxen.hypervisor.hypercall_table import dispatch
    from pyxen.hypervisor.public import memory as M

    mem = GuestMemory(4 << 20, name="pyxen-test-compat", max_size=4 << 20)
    d = Domain(domid=3, name="c", memory=mem, max_vcpus=1, max_memory=4 << 20)
    d.pause_count = 0
    st = PagingState(cr0=0x11, cr3=0, cr4=0, efer=0)

    def memory_op(cmd: int, arg: int) -> int:
        def guest() -> GuestAccess:
            return GuestAccess(mem, lambda va, w: translate(mem.read, st, va, w), compat=True)
        ctx = HC.HypercallContext(d, d.vcpus[0], (cmd, arg, 0, 0, 0), guest, long_mode=False)
        return dispatch(ctx, 12)

    mem.write(0x100000, struct.pack("<III", 0x200, 0x201, 0x202))
    mem.write(0x101000, bytes(M.compat_memory_reservation(
        extent_start=0x100000, nr_extents=3, domid=0x7FF0)))
    assert memory_op(M.XENMEM_decrease_reservation, 0x101000) == 3
    assert mem.tot_pages == 1021 and not mem.is_ram(0x201000)
    assert memory_op(M.XENMEM_decrease_reservation | (2 << 6), 0x101000) == 2  # all holes
    assert memory_op(M.XENMEM_populate_physmap | (1 << 6), 0x101000) == 3  # from extent 1
    assert mem.tot_pages == 1023 and mem.is_ram(0x201000) and not mem.is_ram(0x200000)
    mem.write(0x102000, bytes(M.compat_memory_map(nr_entries=4, buffer=0x103000)))
    assert memory_op(M.XENMEM_memory_map, 0x102000) == 0
    assert M.compat_memory_map.from_buffer_copy(mem.read(0x102000, 8)).nr_entries == 2
    assert struct.unpack("<QQI", mem.read(0x103000, 20)) == (0, 4 << 20, 1)
    mem.write(0x104000, bytes(M.compat_add_to_physmap(
        domid=0x7FF0, space=M.XENMAPSPACE_gmfn, idx=0x100, gpfn=0xFEFF0)))
    mem.write(0x100000, b"moved")
    assert memory_op(M.XENMEM_add_to_physmap, 0x104000) == 0
    assert mem.read(0xFEFF0000, 5) == b"moved" and not mem.is_ram(0x100000)
    mem.close()
