"""The PVH domain builder: an ELF kernel with Xen notes, an optional ramdisk module, and
struct hvm_start_info, laid out in guest memory as Xen's libxl/libxenguest would."""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ...hypervisor.memory import GuestMemory
from ...hypervisor.public import elfnote as N
from ...hypervisor.public.hvm_start_info import (
    XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_START_MAGIC_VALUE,
    hvm_memmap_table_entry,
    hvm_modlist_entry,
    hvm_start_info,
)
from . import acpi

PAGE = 4096
MAX_CMDLINE = 1024


class BuildError(Exception):
    """The domain cannot be built; the message is one line a person can act on."""


@dataclass
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass
class KernelImage:
    path: Path
    segments: list[Segment]
    notes: dict[int, bytes | str | int] = field(default_factory=dict)

    @property
    def phys32_entry(self) -> int:
        return int(self.notes[N.XEN_ELFNOTE_PHYS32_ENTRY])

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def _parse_notes(data: bytes, notes: dict[int, bytes | str | int]) -> None:
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        off += 12
        name = data[off:off + namesz].rstrip(b"\0")
        off += (namesz + 3) & ~3
        desc = data[off:off + descsz]
        off += (descsz + 3) & ~3
        if name != b"Xen":
            continue
        if ntype in N.STRING_NOTES:
            notes[ntype] = desc.split(b"\0")[0].decode("ascii", "replace")
        elif descsz in (4, 8):
            notes[ntype] = int.from_bytes(desc, "little")
        else:
            notes[ntype] = desc


PT_LOAD, PT_NOTE, SHT_NOTE = 1, 4, 7
EM_386, EM_X86_64 = 3, 62


def _read_elf(raw: bytes) -> tuple[list[Segment], dict[int, bytes | str | int]]:
    """The PT_LOAD segments and the Xen notes (PT_NOTE, else SHT_NOTE sections) of a
    little-endian ELF32/ELF64 image: all a PVH builder reads, as libelf in libxenguest.
    (A few struct reads: pyelftools' parser cost each domain ~1.3 MiB and ~8 ms.)"""
    if raw[4] not in (1, 2) or raw[5] != 1:
        raise ValueError("not a little-endian ELF32/ELF64 file")
    wide = raw[4] == 2
    if wide:
        phoff, shoff = struct.unpack_from("<QQ", raw, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", raw, 54)
        ph_fmt, sh_fmt = "<IIQQQQQQ", "<IIQQQQIIQQ"
    else:
        phoff, shoff = struct.unpack_from("<II", raw, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", raw, 42)
        ph_fmt, sh_fmt = "<IIIIIIII", "<IIIIIIIIII"

    def blob(off: int, size: int) -> bytes:
        if off < 0 or size < 0 or off + size > len(raw):
            raise ValueError(f"data at {off:#x}+{size:#x} is past the end of the file")
        return raw[off:off + size]

    segments: list[Segment] = []
    notes: dict[int, bytes | str | int] = {}
    for i in range(phnum):
        f = struct.unpack_from(ph_fmt, raw, phoff + i * phentsize)
        if wide:
            ptype, _flags, off, _vaddr, paddr, filesz, memsz, _align = f
        else:
            ptype, off, _vaddr, paddr, filesz, memsz, _flags, _align = f
        if ptype == PT_LOAD and memsz:
            if filesz > memsz:
                raise ValueError(f"segment {i} has p_filesz > p_memsz")
            segments.append(Segment(paddr, blob(off, filesz), memsz))
        elif ptype == PT_NOTE:
            _parse_notes(blob(off, filesz), notes)
    if not notes:
        for i in range(shnum if shoff else 0):
            f = struct.unpack_from(sh_fmt, raw, shoff + i * shentsize)
            if f[1] == SHT_NOTE:
                _parse_notes(blob(f[4], f[5]), notes)
    return segments, notes


def load_kernel(path: str | Path) -> KernelImage:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise BuildError(f"kernel {p} not found: check 'kernel' in the domain config") from None
    except OSError as e:
        raise BuildError(f"cannot read kernel {p}: {e.strerror}") from None
    if raw[:4] != b"\x7fELF":
        raise BuildError(f"kernel {p} is not an ELF file: pyxen boots PVH kernels, which are "
                         "ELF images with Xen ELF notes")
    machine = int.from_bytes(raw[18:20], "little")
    if machine not in (EM_386, EM_X86_64):
        name = {40: "EM_ARM", 183: "EM_AARCH64", 243: "EM_RISCV"}.get(machine, machine)
        raise BuildError(f"kernel {p} is an ELF file for {name}, not x86")
    try:
        segments, notes = _read_elf(raw)
    except (struct.error, ValueError) as e:
        raise BuildError(f"kernel {p} is a malformed ELF file: {e}") from None
    if not segments:
        raise BuildError(f"kernel {p} has no loadable segments")
    if N.XEN_ELFNOTE_PHYS32_ENTRY not in notes:
        raise BuildError(f"kernel {p} has no XEN_ELFNOTE_PHYS32_ENTRY ELF note, so it cannot "
                         "boot as a PVH guest: use a kernel built with PVH support")
    return KernelImage(p, segments, notes)


@dataclass
class BootInfo:
    entry: int
    start_info: int
    notes: dict[int, bytes | str | int]
    log: list[str]


def _load_acpi(mem: GuestMemory, vcpus: int, max_vcpus: int, log: list[str],
               vnuma=None) -> int:
    """libxl__dom_load_acpi: the tables into the ACPI range the domain's memory was given
    (acpi.region_size); the RSDP's address, 0 when the domain has no such range."""
    tables = acpi.build(vcpus, max_vcpus, vnuma=vnuma)
    if not any(gpa == tables.base and size >= tables.size and kind == acpi.E820_ACPI
               for gpa, size, kind in mem.e820()):
        return 0
    for gpa, data in tables.blobs:
        mem.write(gpa, data)
    log.append(f"PVH: ACPI tables at {tables.base:#x}-{tables.end:#x}, RSDP at "
               f"{tables.rsdp_addr:#x}, {vcpus} of {max_vcpus} vCPU(s) online")
    return tables.rsdp_addr


def _align(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


def build_pvh(mem: GuestMemory, kernel_path: str | Path, ramdisk_path: str | Path | None,
              cmdline: str, vcpus: int = 1, max_vcpus: int | None = None,
              vnuma=None) -> BootInfo:
    kernel = load_kernel(kernel_path)
    mib = mem.size >> 20
    log = []
    for n, v in sorted(kernel.notes.items()):
        shown = f"{v:#x}" if isinstance(v, int) else (f'"{v}"' if isinstance(v, str) else
                                                      v.hex())
        log.append(f"ELF: note: {N.NAMES.get(n, str(n))} = {shown}")
    for s in kernel.segments:
        if not mem.is_ram(s.paddr, s.memsz):
            raise BuildError(f"kernel {kernel.path} loads at {s.paddr:#x}-"
                             f"{s.paddr + s.memsz:#x}, outside the domain's {mib} MiB of RAM: "
                             "raise 'memory'")
        # The rest of memsz (.bss) is not written: a new domain's store is a new memfd,
        # zero already, and the host allocates those pages only when the guest uses them
        # (as a VMM loading into fresh anonymous memory does).
        mem.write(s.paddr, s.data)
    log.append(f"ELF: phdr: paddr={min(s.paddr for s in kernel.segments):#x} "
               f"end={kernel.end:#x} entry(phys32)={kernel.phys32_entry:#x}")

    cursor = _align(kernel.end)
    modules: list[hvm_modlist_entry] = []
    if ramdisk_path:
        rd = Path(ramdisk_path)
        try:
            data = rd.read_bytes()
        except FileNotFoundError:
            raise BuildError(f"ramdisk {rd} not found: check 'ramdisk' in the domain "
                             "config") from None
        except OSError as e:
            raise BuildError(f"cannot read ramdisk {rd}: {e.strerror}") from None
        if not mem.is_ram(cursor, max(len(data), 1)):
            raise BuildError(f"ramdisk {rd} ({len(data)} bytes) does not fit in the domain's "
                             f"{mib} MiB of RAM: raise 'memory'")
        mem.write(cursor, data)
        modules.append(hvm_modlist_entry(paddr=cursor, size=len(data)))
        log.append(f"PVH: module 0 (ramdisk) at {cursor:#x}, {len(data)} bytes")
        cursor = _align(cursor + len(data))

    rsdp_paddr = _load_acpi(mem, vcpus, max_vcpus or vcpus, log, vnuma)

    cmd = cmdline.encode()[: MAX_CMDLINE - 1] + b"\0"
    e820 = mem.e820()
    si_size = ctypes.sizeof(hvm_start_info)
    mod_off = si_size
    map_off = mod_off + len(modules) * ctypes.sizeof(hvm_modlist_entry)
    cmd_off = map_off + len(e820) * ctypes.sizeof(hvm_memmap_table_entry)
    total = cmd_off + len(cmd)
    if not mem.is_ram(cursor, total):
        raise BuildError(f"the domain's {mib} MiB of RAM cannot hold the kernel, ramdisk and "
                         "start info: raise 'memory'")
    base = cursor
    si = hvm_start_info(magic=XEN_HVM_START_MAGIC_VALUE, version=1, nr_modules=len(modules),
                        modlist_paddr=base + mod_off if modules else 0,
                        cmdline_paddr=base + cmd_off, rsdp_paddr=rsdp_paddr,
                        memmap_paddr=base + map_off, memmap_entries=len(e820))
    blob = bytes(si) + b"".join(bytes(m) for m in modules)
    blob += b"".join(bytes(hvm_memmap_table_entry(addr=a, size=s, type=XEN_HVM_MEMMAP_TYPE_RAM
                                                  if t == 1 else t)) for a, s, t in e820)
    blob += cmd
    mem.write(base, blob)
    log.append(f"PVH: hvm_start_info at {base:#x}, cmdline \"{cmdline}\"")
    return BootInfo(kernel.phys32_entry, base, kernel.notes, log)
