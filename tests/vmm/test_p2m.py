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
