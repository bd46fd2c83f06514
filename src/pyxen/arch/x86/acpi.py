"""ACPI tables for PVH guests, as libxl builds them (tools/libs/light/libxl_x86_acpi.c with
tools/libacpi): how an SMP PVH kernel finds its CPUs.

Layout in guest-physical memory, at Xen's addresses: the acpi_info page at
ACPI_INFO_PHYSICAL_ADDRESS (0xFC000000), the tables from the next page on (16-byte
aligned), then the RSDP on the page after the tables; the whole range is E820 "ACPI"
(type 3) and hvm_start_info.rsdp_paddr points to the RSDP. The tables:

- RSDP (revision 2) -> XSDT -> FADT, MADT
- FADT (revision 6): HW_REDUCED_ACPI (no PM timer, no SCI, no fixed power button), no VGA,
  no CMOS RTC, no 8042 (a PVH domain has none of them); its DSDT:
- DSDT: one processor device (ACPI0007) per possible vCPU, _UID = the vCPU id;
- SRAT and SLIT, for a domain with a virtual NUMA topology (xl.cfg `vnuma=`, libacpi's
  construct_srat/construct_slit): each vCPU's and each memory range's vnode, and the
  distance table; the same layout XENMEM_get_vnumainfo reports (hypervisor/vnuma.py).
- MADT: one Local APIC entry per possible vCPU: enabled for the vCPUs online at boot
  (`vcpus`), present but disabled for the rest up to `maxvcpus` (Xen's flags); x2APIC
  entries for APIC ids above 254. No I/O APIC entry: a PVH domain has no I/O APIC.

APIC ids: Xen gives vCPU n the APIC id 2n; under KVM a vCPU's APIC id is its KVM vCPU id,
which pyxen makes equal to n (and CPUID leaf 1 reports), so the MADT says n: the table
must name the APIC ids the guest's LAPICs really have.

What pyxen leaves out of libxl's set: the RSDT and the ACPI 1.0 FADT (ACPI 1.0 operating
systems), the FACS (optional with HW_REDUCED_ACPI), and the copy of the RSDP in the BIOS
area that libxl makes for old Linux kernels that cannot read rsdp_paddr.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...hypervisor.memory import PAGE_SIZE

ACPI_INFO_PHYSICAL_ADDRESS = 0xFC000000
LAPIC_BASE_ADDRESS = 0xFEE00000
E820_ACPI = 3

OEM_ID = b"Xen"
OEM_TABLE_ID = b"HVM"
CREATOR_ID = b"HVML"
CREATOR_REVISION = 0

FADT_REVISION, FADT_MINOR = 6, 0
FADT_LENGTH = 276
FADT_PWR_BUTTON = 1 << 4  # "no fixed power button"
FADT_SLP_BUTTON = 1 << 5
FADT_HW_REDUCED_ACPI = 1 << 20
BOOT_ARCH_NO_VGA = 1 << 2
BOOT_ARCH_NO_CMOS_RTC = 1 << 5
MADT_REVISION = 4
MADT_PCAT_COMPAT = 1
MADT_LAPIC, MADT_X2APIC = 0, 9
LAPIC_ENABLED = 1


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes data sum to 0 modulo 256."""
    return -sum(data) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    length = 36 + len(body)
    hdr = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID,
                      OEM_TABLE_ID, 0, CREATOR_ID, CREATOR_REVISION)
    raw = bytearray(hdr + body)
    raw[9] = checksum(raw)
    return bytes(raw)


# --- AML (ACPI Machine Language), just what the DSDT needs ----------------------------------

def _pkg_length(body_len: int) -> bytes:
    """AML PkgLength of a package whose contents after the PkgLength are body_len bytes."""
    if body_len + 1 < 64:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            return bytes([(extra << 6) | (total & 0xF)]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError("AML package too large")


def _aml_integer(v: int) -> bytes:
    if v in (0, 1):
        return bytes([v])  # ZeroOp, OneOp
    if v < 1 << 8:
        return b"\x0a" + bytes([v])
    if v < 1 << 16:
        return b"\x0b" + v.to_bytes(2, "little")
    return b"\x0c" + v.to_bytes(4, "little")


def _aml_name(seg: bytes, value: bytes) -> bytes:
    return b"\x08" + seg + value


def _aml_device(seg: bytes, body: bytes) -> bytes:
    return b"\x5b\x82" + _pkg_length(4 + len(body)) + seg + body


def _aml_scope(path: bytes, body: bytes) -> bytes:
    return b"\x10" + _pkg_length(len(path) + len(body)) + path + body


def dsdt(max_vcpus: int) -> bytes:
    cpus = b"".join(
        _aml_device(f"C{i:03X}".encode(),
                    _aml_name(b"_HID", b"\x0dACPI0007\x00") + _aml_name(b"_UID", _aml_integer(i)))
        for i in range(max_vcpus))
    return _table(b"DSDT", 2, _aml_scope(b"\\_SB_", cpus))


def fadt(dsdt_addr: int) -> bytes:
    body = bytearray(FADT_LENGTH - 36)

    def put(offset: int, fmt: str, *values: int) -> None:
        struct.pack_into("<" + fmt, body, offset - 36, *values)

    put(40, "I", dsdt_addr)
    put(109, "H", BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC)
    put(112, "I", FADT_HW_REDUCED_ACPI | FADT_PWR_BUTTON | FADT_SLP_BUTTON)
    put(131, "B", FADT_MINOR)
    put(140, "Q", dsdt_addr)
    body[268 - 36:276 - 36] = b"XenVMM\0\0"  # hypervisor vendor identity
    return _table(b"FACP", FADT_REVISION, bytes(body))


def madt(apic_ids: list[int], online: int) -> bytes:
    body = struct.pack("<II", LAPIC_BASE_ADDRESS, MADT_PCAT_COMPAT)
    for uid, apic in enumerate(apic_ids):
        flags = LAPIC_ENABLED if uid < online else 0
        if apic < 255:
            body += struct.pack("<BBBBI", MADT_LAPIC, 8, uid, apic, flags)
        else:
            body += struct.pack("<BBHIII", MADT_X2APIC, 16, 0, apic, flags, uid)
    return _table(b"APIC", MADT_REVISION, body)


SRAT_REVISION, SLIT_REVISION = 3, 1
SRAT_CPU, SRAT_MEMORY = 0, 1
SRAT_ENABLED = 1


def srat(vcpu_to_vnode: list[int] | tuple[int, ...],
         ranges: list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...]) -> bytes:
    """Processor Local APIC affinity per vCPU (APIC id = vCPU id, as the MADT says) and
    Memory affinity per range."""
    body = struct.pack("<IQ", 1, 0)  # reserved: 1 for backward compatibility
    for cpu, node in enumerate(vcpu_to_vnode):
        body += struct.pack("<BBBBIB3sI", SRAT_CPU, 16, node & 0xFF, cpu, SRAT_ENABLED, 0,
                            (node >> 8).to_bytes(3, "little"), 0)
    for start, end, node in ranges:
        body += struct.pack("<BBIHQQIIQ", SRAT_MEMORY, 40, node, 0, start, end - start, 0,
                            SRAT_ENABLED, 0)
    return _table(b"SRAT", SRAT_REVISION, body)


def slit(distances: list[list[int]] | tuple[tuple[int, ...], ...]) -> bytes:
    n = len(distances)
    return _table(b"SLIT", SLIT_REVISION,
                  struct.pack("<Q", n) + bytes(min(d, 255) for row in distances for d in row))


def xsdt(entries: list[int]) -> bytes:
    return _table(b"XSDT", 1, b"".join(struct.pack("<Q", e) for e in entries))


def rsdp(xsdt_addr: int) -> bytes:
    raw = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36,
                                xsdt_addr, 0))
    raw[8] = checksum(raw[:20])
    raw[32] = checksum(raw)
    return bytes(raw)


@dataclass
class AcpiTables:
    """The tables of one domain, laid out from `base` (guest-physical)."""
    base: int
    blobs: list[tuple[int, bytes]]  # (gpa, bytes)
    rsdp_addr: int
    size: int  # bytes of the E820 ACPI range, from base, whole pages

    @property
    def end(self) -> int:
        return self.base + self.size


def build(vcpus: int, max_vcpus: int, base: int = ACPI_INFO_PHYSICAL_ADDRESS,
          vnuma=None) -> AcpiTables:
    """libxl__dom_load_acpi's layout: info page, tables, RSDP page. `vnuma`: the domain's
    hypervisor.vnuma.VNuma, which adds the SRAT and SLIT."""
    if not 1 <= vcpus <= max_vcpus:
        raise ValueError(f"vcpus={vcpus} must be 1..maxvcpus={max_vcpus}")
    cursor = base + PAGE_SIZE
    blobs: list[tuple[int, bytes]] = []

    def place(data: bytes) -> int:
        nonlocal cursor
        addr = (cursor + 15) & ~15
        blobs.append((addr, data))
        cursor = addr + len(data)
        return addr

    dsdt_addr = place(dsdt(max_vcpus))
    fadt_addr = place(fadt(dsdt_addr))
    madt_addr = place(madt(list(range(max_vcpus)), vcpus))
    entries = [fadt_addr, madt_addr]
    if vnuma is not None:
        entries.append(place(srat(vnuma.vcpu_to_vnode, vnuma.ranges)))
        entries.append(place(slit(vnuma.distances)))
    xsdt_addr = place(xsdt(entries))
    table_pages = (cursor - base - PAGE_SIZE + PAGE_SIZE - 1) // PAGE_SIZE
    rsdp_addr = base + (1 + table_pages) * PAGE_SIZE
    blobs.append((rsdp_addr, rsdp(xsdt_addr)))
    # struct acpi_info (libacpi): nr_cpus, and where the MADT's checksum and first LAPIC are
    info = struct.pack("<BxHIIII", 0, max_vcpus, 0, 0, madt_addr + 9, madt_addr + 44)
    blobs.insert(0, (base, info))
    return AcpiTables(base, blobs, rsdp_addr, (2 + table_pages) * PAGE_SIZE)


def region_size(max_vcpus: int, vnuma=None) -> int:
    """Bytes to reserve at ACPI_INFO_PHYSICAL_ADDRESS for a domain of max_vcpus."""
    return build(1, max_vcpus, vnuma=vnuma).size
