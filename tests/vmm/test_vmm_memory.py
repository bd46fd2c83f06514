"""The memory part of the PVH ABI with a real guest (guests/balloon.c, mode=balloon): the
memory map, the shared info page placed in an e820 hole and moved, ballooning that really
gives memory back to the host (the VMM's memfd), and Xen's errors."""

from __future__ import annotations

import os

import pytest

MIB = 1 << 20


def ram_memfd_bytes(pid: int, domid: int) -> int:
    """Host memory held by the VMM's guest-memory memfd (allocated blocks)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if os.readlink(path).startswith(f"/memfd:pyxen-d{domid}-ram"):
                return os.stat(path).st_blocks * 512
        except OSError:
            continue
    raise AssertionError("no guest memory memfd in the VMM")


def line(d, prefix: str) -> str:
    return d.wait_log(lambda ln: f"balloon: {prefix}" in ln).split("balloon: ", 1)[1]


@pytest.mark.timeout(120)
def test_balloon_memory_map_shared_info_and_reservations(boot) -> None:
    d = boot("mode=balloon", memory=32, maxmem=36)
    d.request("unpause")
    con = d.console()
    # The e820 the toolstack set: RAM, libxl's reserved special pages, the ACPI tables; the
    # same table as hvm_start_info's memmap (the builder writes it from the same place).
    assert line(d, "memory_map rc") == "memory_map rc 0, 3 entries"
    assert line(d, "memory_map with") == "memory_map with room for 1: rc 0, 1 entries"
    e820 = ["0 2000000 1", "fc000000 3000 3", "feff8000 8000 2"]
    assert [ln for ln in d.guest_lines() if "e820" in ln] == [f"balloon: e820 {e}" for e in e820]
    assert [ln for ln in d.guest_lines() if "start_info memmap" in ln] == [
        f"balloon: start_info memmap {e}" for e in e820]
    assert line(d, "reservation current") == "reservation current 8192 maximum 9216"
    # Shared info over a RAM page (Xen frees that page), then into an e820 hole, then back.
    assert line(d, "shared info at RAM") == \
        "shared info at RAM gfn: rc 0, wallclock ok, reservation -1"
    assert line(d, "shared info at hole") == "shared info at hole gfn feff0: rc 0, wallclock ok"
    assert line(d, "time in vcpu_info") == "time in vcpu_info at the hole: ok"
    assert line(d, "old gfn") == "old gfn reads zeros, as a hypercall buffer: -14"
    assert line(d, "maximum_gpfn") == "maximum_gpfn feff0" or \
        line(d, "maximum_gpfn") == "maximum_gpfn fefff"  # the console/xenstore pages
    assert line(d, "shared info back") == ("shared info back in RAM: rc 0, wallclock ok, "
                                           "hole reads ffffffff, as a hypercall buffer: -14")
    assert line(d, "errors") == (
        "errors: idx 1 -22, gfn 2^52 -22, domid 7 -3, domid 0 -1, space 9 -22, foreign -38, "
        "remove hole -2, current(d7) -3, set_memory_map(2000) -22")

    # Ballooning: 1024 dirtied pages (4 MiB) go back to the host and come back.
    assert line(d, "dirtied") == "dirtied 1024 pages, reservation 8190"
    line(d, "waiting for 'd'")
    before = ram_memfd_bytes(d.proc.pid, d.domid)
    assert d.request("info")["memory_kib"] == 8190 * 4
    con.sendall(b"d")
    assert line(d, "decrease_reservation") == ("decrease_reservation 1024, reservation 7166, "
                                               "old data left 0, hypercall buffer there -14")
    assert line(d, "decrease again") == "decrease again (holes) 0, domid 7 0, order 10 0"
    line(d, "waiting for 'p'")
    after = ram_memfd_bytes(d.proc.pid, d.domid)
    # all but the 8 pages the guest read back (a read of a hole allocates it again), and
    # the few pages of its .bss it touches for the first time meanwhile (the builder
    # leaves .bss unwritten: the host allocates it as the guest uses it)
    assert before - after >= 4 * MIB - 16 * 4096, (before, after)
    info = d.request("info")
    assert info["memory_kib"] == 7166 * 4 and info["max_memory_kib"] == 36 * 1024
    con.sendall(b"p")
    assert line(d, "populate_physmap(order 9)") == \
        "populate_physmap(order 9) 2, reservation 8190, old data left 0"
    assert line(d, "repopulated") == "repopulated pages hold data: yes"
    # Up to maxmem: 1024 pages in the RAM window above 32 MiB, then 2 beyond it (their
    # own KVM slots), then nothing more (Xen: fewer extents done, no error code).
    assert line(d, "populate above RAM") == "populate above RAM 1026 of 2048, reservation 9216"
    assert line(d, "last populated") == "last populated page 2401 holds data: yes; more: 0"
    line(d, "waiting for 'q'")
    assert ram_memfd_bytes(d.proc.pid, d.domid) >= after + 4 * MIB - 8 * 4096
    assert d.request("info")["memory_kib"] == 36 * 1024
    con.sendall(b"q")
    assert d.wait_event("shutdown")["reason"] == "poweroff"
    con.close()
