"""The PVH builder's ELF reader (arch/x86/pvh.py: program headers and Xen notes read with
struct, for ELF64 and ELF32 kernels), checked against binutils' readelf on the real
guest images, and its one-line errors for broken files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyxen.arch.x86.pvh import BuildError, load_kernel
from pyxen.hypervisor.public import elfnote as N

BUILD = Path(__file__).resolve().parents[2] / "guests" / "build"
GUESTS = [BUILD / n for n in ("hello.elf", "compat32.elf", "evtchn32.elf")]


def readelf_loads(path: Path) -> list[tuple[int, int, int]]:
    """(paddr, filesz, memsz) of each PT_LOAD, as readelf -lW prints them."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and int(f[5], 16):
            rows.append((int(f[3], 16), int(f[4], 16), int(f[5], 16)))
    return rows


@pytest.mark.parametrize("path", GUESTS, ids=lambda p: p.name)
def test_segments_and_notes_match_readelf(path: Path) -> None:
    if not path.exists():
        pytest.skip("make -C guests")
    k = load_kernel(path)
    assert [(s.paddr, len(s.data), s.memsz) for s in k.segments] == readelf_loads(path)
    notes = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True,
                           check=True).stdout
    assert "Xen" in notes and k.phys32_entry == k.notes[N.XEN_ELFNOTE_PHYS32_ENTRY]
    raw = path.read_bytes()
    s0 = k.segments[0]
    assert s0.data in raw  # the file's bytes, not a copy of something else


def test_broken_files_are_one_line_errors(tmp_path: Path) -> None:
    raw = (BUILD / "hello.elf").read_bytes()
    cases = {
        "truncated": (raw[:200], "malformed ELF"),
        "bad class": (raw[:4] + b"\x07" + raw[5:], "malformed ELF"),
        "arm": (raw[:18] + (183).to_bytes(2, "little") + raw[20:], "for EM_AARCH64, not x86"),
        "phdr past the end": (raw[:32] + (len(raw) + 64).to_bytes(8, "little") + raw[40:],
                              "malformed ELF"),
    }
    for name, (data, msg) in cases.items():
        f = tmp_path / name.replace(" ", "_")
        f.write_bytes(data)
        with pytest.raises(BuildError) as e:
            load_kernel(f)
        assert msg in str(e.value) and "\n" not in str(e.value), (name, e.value)
