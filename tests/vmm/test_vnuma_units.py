"""vNUMA layout and its ACPI tables (pure logic; the guest's view is
tests/toolstack/test_xl_vnuma.py)."""

from __future__ import annotations

import struct

import pytest

from pyxen.arch.x86 import acpi
from pyxen.hypervisor.vnuma import build_vnuma

G = 1 << 30


def test_a_vnode_spanning_the_mmio_hole_gets_two_ranges() -> None:
    v = build_vnuma([3 * G, 2 * G], [[10, 20], [20, 10]], [0, 1, 1])
    assert v.ranges == ((0, 3 * G, 0), (3 * G, 0xF0000000, 1),
                        (4 * G, 4 * G + 2 * G - (0xF0000000 - 3 * G), 1))
    assert v.nr_vnodes == 2 and v.vcpu_to_vnode == (0, 1, 1)


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError):
        build_vnuma([G], [[10, 20]], [0])
    with pytest.raises(ValueError):
        build_vnuma([G], [[10]], [1])


def test_srat_and_slit_bytes() -> None:
    v = build_vnuma([16 << 20, 16 << 20], [[10, 21], [21, 10]], [0, 1])
    srat = acpi.srat(v.vcpu_to_vnode, v.ranges)
    assert srat[:4] == b"SRAT" and sum(srat) & 0xFF == 0
    assert len(srat) == 36 + 12 + 2 * 16 + 2 * 40
    cpu1 = srat[48 + 16:48 + 32]
    assert (cpu1[0], cpu1[1], cpu1[2], cpu1[3]) == (0, 16, 1, 1)
    mem1 = srat[48 + 32 + 40:48 + 32 + 80]
    assert struct.unpack_from("<BBIHQQIIQ", mem1) == (1, 40, 1, 0, 16 << 20, 16 << 20, 0,
                                                      1, 0)
    slit = acpi.slit(v.distances)
    assert slit[:4] == b"SLIT" and sum(slit) & 0xFF == 0
    assert slit[36:] == struct.pack("<Q", 2) + bytes([10, 21, 21, 10])
    tables = acpi.build(2, 2, vnuma=v)
    sigs = [data[:4] for _, data in tables.blobs]
    assert b"SRAT" in sigs and b"SLIT" in sigs
    assert acpi.region_size(2, v) >= acpi.region_size(2)
