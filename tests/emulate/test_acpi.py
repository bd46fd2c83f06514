"""ACPI tables for PVH guests (arch/x86/acpi.py): the bytes (checksums, layout, and iasl's
reading of them), and a real SMP guest (guests/acpi_test.c) that finds its CPUs through
hvm_start_info.rsdp_paddr -> XSDT -> MADT and starts them."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyxen.arch.x86 import acpi

ACPI_TEST = Path(__file__).resolve().parents[2] / "guests" / "build" / "acpi_test.elf"


def tables_by_signature(t: acpi.AcpiTables) -> dict[bytes, tuple[int, bytes]]:
    return {data[:4]: (gpa, data) for gpa, data in t.blobs if gpa != t.base}


def test_tables_checksums_and_links() -> None:
    t = acpi.build(vcpus=2, max_vcpus=4)
    assert (t.base, t.size) == (0xFC000000, 3 * 4096)  # info page, tables, RSDP page
    tables = tables_by_signature(t)
    rsdp_gpa, rsdp = tables[b"RSD "]
    assert rsdp_gpa == t.rsdp_addr == 0xFC002000 and rsdp[:8] == b"RSD PTR "
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0 and rsdp[15] == 2
    xsdt_addr = struct.unpack_from("<Q", rsdp, 24)[0]
    assert tables[b"XSDT"][0] == xsdt_addr
    for sig, (gpa, data) in tables.items():
        assert gpa % 16 == 0 and t.base < gpa < t.end
        if sig != b"RSD ":
            assert struct.unpack_from("<I", data, 4)[0] == len(data)
            assert sum(data) % 256 == 0, sig
    xsdt = tables[b"XSDT"][1]
    assert list(struct.unpack_from("<2Q", xsdt, 36)) == [tables[b"FACP"][0],
                                                         tables[b"APIC"][0]]
    fadt = tables[b"FACP"][1]
    assert fadt[8] == 6 and len(fadt) == 276
    assert struct.unpack_from("<I", fadt, 112)[0] & (1 << 20)  # HW_REDUCED_ACPI
    assert struct.unpack_from("<Q", fadt, 140)[0] == tables[b"DSDT"][0]
    madt = tables[b"APIC"][1]
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)
    # (type, length, uid, apic id, flags): 2 enabled, 2 present but disabled, no I/O APIC
    assert [struct.unpack_from("<BBBBI", madt, 44 + 8 * i) for i in range(4)] == [
        (0, 8, 0, 0, 1), (0, 8, 1, 1, 1), (0, 8, 2, 2, 0), (0, 8, 3, 3, 0)]
    assert len(madt) == 44 + 4 * 8


def test_bad_vcpu_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        acpi.build(vcpus=3, max_vcpus=2)
    with pytest.raises(ValueError):
        acpi.build(vcpus=0, max_vcpus=2)


def test_many_vcpus_span_pages_and_keep_the_rsdp_after_the_tables() -> None:
    t = acpi.build(vcpus=100, max_vcpus=128)
    tables = tables_by_signature(t)
    assert t.rsdp_addr >= max(gpa + len(d) for gpa, d in tables.values() if d[:4] != b"RSD ")
    assert t.rsdp_addr + 36 <= t.end and acpi.region_size(128) == t.size
    madt = tables[b"APIC"][1]
    flags = [struct.unpack_from("<I", madt, 44 + 8 * i + 4)[0] for i in range(128)]
    assert flags == [1] * 100 + [0] * 28


@pytest.mark.skipif(shutil.which("iasl") is None, reason="needs iasl (Debian acpica-tools)")
def test_iasl_reads_the_tables(tmp_path: Path) -> None:
    t = acpi.build(vcpus=2, max_vcpus=4)
    out = {}
    for sig, (_gpa, data) in tables_by_signature(t).items():
        if sig == b"RSD ":
            continue
        name = sig.decode().lower()
        (tmp_path / f"{name}.dat").write_bytes(data)
        r = subprocess.run(["iasl", "-d", f"{name}.dat"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        out[name] = (tmp_path / f"{name}.dsl").read_text()
        assert "Error" not in out[name] and "Invalid" not in out[name], out[name]
    assert "Hardware Reduced (V5) : 1" in out["facp"]
    assert out["apic"].count("[Processor Local APIC]") == 4
    assert out["apic"].count("Processor Enabled : 1") == 2
    assert out["dsdt"].count('Name (_HID, "ACPI0007"') == 4


@pytest.mark.timeout(120)
def test_smp_guest_finds_its_cpus_in_the_madt_and_starts_them(boot) -> None:
    d = boot(cmdline="", vcpus=2, maxvcpus=4, kernel=str(ACPI_TEST))
    d.request("unpause")
    assert d.wait_event("shutdown")["reason"] == "poweroff"
    lines = [ln for ln in d.guest_lines() if ln.startswith("acpi: ")]
    assert lines[0].startswith("acpi: start_info version 1 rsdp_paddr fc00"), lines
    assert "acpi: FADT revision 6 hw_reduced 1, DSDT length 158 checksum ok" in lines, lines
    assert ("acpi: MADT lapic fee00000: 2 enabled cpus (apic ids 0,1), 2 disabled "
            "(apic ids 2,3)") in lines, lines
    assert "acpi: vcpu 1 up, apic id 1 (MADT says 1)" in lines, lines
    assert "acpi: 2 cpus running with the APIC ids the MADT gives" in lines, lines
    assert lines[-1] == "acpi: done: ok", lines
    assert not any("I/O APIC" in ln for ln in lines)
    assert any("(XEN) PVH: ACPI tables at 0xfc000000-0xfc003000, RSDP at 0xfc002000, "
               "2 of 4 vCPU(s) online" == ln for ln in d.log), d.log
