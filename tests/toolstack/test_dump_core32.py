"""xl dump-core of a 32-bit PVH guest (guests/save32.c: 32-bit protected mode, paging
off, shared_info latched to the x86_32 layout).

Which layout Xen writes: libxc's xc_domain_dumpcore forces guest_width to the toolstack's
sizeof(unsigned long) for an auto-translated (HVM/PVH) guest (xg_core.c: "Autotranslated
guest never sets guest width"), and XEN_DOMCTL_getvcpucontext gives an HVM vCPU's
registers in the native layout (the compat one is for 32-bit PV domains only). So the
file of a 32-bit PVH guest is the same ELF64 / EM_X86_64 file with x86_64
vcpu_guest_contexts as a 64-bit guest's, holding the 32-bit vCPU's values
(zero-extended); only what the guest itself wrote is in its own layout: the shared_info
page, in the x86_32 layout. This test reads such a file with readelf and pyelftools and
checks each part against the guest.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from xlhost import REPO, Host, needs_vmm

pytestmark = [needs_vmm, pytest.mark.timeout(120)]

GUEST = REPO / "guests" / "build" / "save32.elf"
VGC_SIZE = 5168  # sizeof(vcpu_guest_context_t), x86_64 (tests/test_abi_layout.py)
FLAGS_OFF = 512  # vcpu_guest_context.flags, after fpu_ctxt
REGS_OFF = 520  # user_regs
RIP_OFF, CS_OFF, RSP_OFF, SS_OFF = REGS_OFF + 128, REGS_OFF + 136, REGS_OFF + 152, \
    REGS_OFF + 160
CTRLREG_OFF = 4984
DEBUGREG_OFF = CTRLREG_OFF + 8 * 8
VGCF_I387_VALID, VGCF_IN_KERNEL, VGCF_ONLINE = 1, 4, 32
# shared_info, x86_32: vcpu_info[32] (64 bytes each), evtchn_pending[32] and
# evtchn_mask[32] of 32-bit words, then wc_version, wc_sec, wc_nsec (x86_64: the two
# arrays hold 64 words of 64 bits, and wc_version is at 3072)
WC32_OFF, WC64_OFF = 2048 + 128 + 128, 2048 + 512 + 512


def start_guest(host: Host, tmp_path: Path) -> int:
    cfg = tmp_path / "d32.cfg"
    cfg.write_text(f'name = "d32"\ntype = "pvh"\nkernel = "{GUEST}"\nmemory = 32\n'
                   'vcpus = 2\n')
    host.xl("create", str(cfg), check=True)
    domid = int(host.list()["d32"]["id"])
    host.wait_for(lambda: host.xenstore(
        "xenstore-read", f"/local/domain/{domid}/control/feature-suspend").stdout.strip()
        == "1", "the guest's PV set-up")
    return domid


def test_dump_core_of_a_32_bit_guest(host: Host, tmp_path: Path) -> None:
    start_guest(host, tmp_path)
    core = tmp_path / "d32.core"
    r = host.xl("dump-core", "d32", str(core))
    assert r.returncode == 0 and r.stderr == "", r

    ra = subprocess.run(["readelf", "-h", "-S", "-n", "-W", str(core)], capture_output=True,
                        text=True)
    assert ra.returncode == 0 and "warning" not in ra.stderr.lower(), ra.stderr
    assert "ELF64" in ra.stdout and "CORE (Core file)" in ra.stdout
    assert "Advanced Micro Devices X86-64" in ra.stdout  # EM_X86_64, as libxc for HVM

    with GUEST.open("rb") as k:
        kelf = ELFFile(k)
        assert kelf.elfclass == 32
        load = next(s for s in kelf.iter_segments() if s["p_type"] == "PT_LOAD")
        lo, hi = load["p_paddr"], load["p_paddr"] + load["p_memsz"]
        text = kelf.get_section_by_name(".text")
        text_addr, code = text["sh_addr"], text.data()

    with core.open("rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf["e_machine"] == "EM_X86_64"
        notes = {n["n_type"]: n for n in elf.get_section_by_name(".note.Xen").iter_notes()}
        magic, nr_vcpus, nr_pages, _ = struct.unpack("<4Q", notes[0x2000001]["n_descdata"][:32])
        assert (magic, nr_vcpus) == (0xF00FEBEE, 2)

        pr = elf.get_section_by_name(".xen_prstatus")
        assert pr["sh_entsize"] == VGC_SIZE and pr["sh_size"] == 2 * VGC_SIZE
        ctx = pr.data()
        (flags,) = struct.unpack_from("<Q", ctx, FLAGS_OFF)
        # Xen's arch_get_info_guest for an HVM vCPU: online, FPU valid, VGCF_in_kernel
        # only for PV vCPUs
        assert flags == VGCF_ONLINE | VGCF_I387_VALID, hex(flags)
        # the FXSAVE image (FCW and MXCSR never read 0) and the debug registers
        fcw, = struct.unpack_from("<H", ctx, 0)
        mxcsr, = struct.unpack_from("<I", ctx, 24)
        assert fcw == 0x37F and mxcsr & 0x1F80 == 0x1F80, (hex(fcw), hex(mxcsr))
        dr6, dr7 = struct.unpack_from("<2Q", ctx, DEBUGREG_OFF + 6 * 8)
        assert dr6 == 0xFFFF0FF0 and dr7 & 0x400, (hex(dr6), hex(dr7))
        (rip,) = struct.unpack_from("<Q", ctx, RIP_OFF)
        (rsp,) = struct.unpack_from("<Q", ctx, RSP_OFF)
        (cs,) = struct.unpack_from("<H", ctx, CS_OFF)
        (ss,) = struct.unpack_from("<H", ctx, SS_OFF)
        cr0, _, cr2, cr3, cr4 = struct.unpack_from("<5Q", ctx, CTRLREG_OFF)
        # the 32-bit vCPU's values, zero-extended into the x86_64 layout: EIP inside the
        # guest's image (its code or the hypercall page in its .bss), ESP on its stack
        assert lo <= rip < hi, (hex(rip), hex(lo), hex(hi))
        assert lo <= rsp <= hi, hex(rsp)
        assert cs != 0 and ss != 0 and cs & 3 == 0
        assert cr0 & 1 and not cr0 & (1 << 31), hex(cr0)  # protected mode, paging off
        assert not cr4 & (1 << 5), hex(cr4)  # no PAE
        # vCPU 1 was never brought up: zeros, as for Xen's down vCPU
        assert ctx[VGC_SIZE:] == bytes(VGC_SIZE)

        # the shared_info page is the guest's, in the x86_32 layout it latched
        si = elf.get_section_by_name(".xen_shared_info").data()
        _, wc_sec, wc_nsec = struct.unpack_from("<3I", si, WC32_OFF)
        assert wc_sec > 1_500_000_000 and wc_nsec < 1_000_000_000, (wc_sec, wc_nsec)
        assert struct.unpack_from("<I", si, WC64_OFF + 4)[0] != wc_sec

        pfns = elf.get_section_by_name(".xen_pfn").data()
        pfn_list = list(struct.unpack(f"<{len(pfns) // 8}Q", pfns))
        assert len(pfn_list) == nr_pages
        pages = elf.get_section_by_name(".xen_pages")
        # the guest's 32-bit code, read back at its physical address (paging is off)
        first = text_addr >> 12
        for k in range(min(len(code) // 4096, 4)):
            page_off = (first + k) * 4096
            idx = pfn_list.index(first + k)
            f.seek(pages["sh_offset"] + idx * 4096)
            got = f.read(4096)
            start = max(text_addr, page_off)
            end = min(text_addr + len(code), page_off + 4096)
            assert got[start - page_off:end - page_off] == \
                code[start - text_addr:end - text_addr], f"page {first + k:#x}"
    host.xl("destroy", "d32", check=True)
    host.assert_clean()
