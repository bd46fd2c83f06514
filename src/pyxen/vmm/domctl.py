"""The VMM's side of xl's everyday domain operations (Xen's XEN_DOMCTL_* that the
toolstack issues): ``trigger`` (XEN_DOMCTL_sendtrigger), ``dump_core`` (libxc's
xc_domain_dumpcore: the ELF core file) and ``dev_stats`` (the backends' counters that
xentop reads: ``xl top``). hostd routes xl's requests here (toolstack/domops.py)."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Any

from ..arch.x86 import kvm_abi as K
from ..arch.x86.kvm import ioctl
from ..hypervisor.public import vcpu_context as C

PAGE = 4096

# --------------------------------------------------------------------------- triggers


def trigger(d: Any, kind: str, vcpu: int) -> None:
    """XEN_DOMCTL_sendtrigger for a PVH domain (xen/arch/x86/domctl.c): an NMI is raised
    on the vCPU (KVM_NMI); the ACPI power and sleep buttons are accepted and do nothing, as
    Xen's hvm_acpi_power_button() for a domain without the emulated PM block; reset and
    init are not implemented by Xen's domctl (-ENOSYS)."""
    if not isinstance(vcpu, int) or isinstance(vcpu, bool) or not 0 <= vcpu < d.max_vcpus:
        raise OSError(errno.ESRCH, os.strerror(errno.ESRCH))
    if kind in ("power", "sleep"):
        return
    if kind != "nmi":
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    machine = d.platform
    d.pause()  # out of KVM_RUN: a vCPU's ioctls belong to the thread running it otherwise
    try:
        ioctl(machine.vcpus[vcpu].fd, K.KVM_NMI)
    finally:
        d.unpause()
    v = d.vcpus[vcpu]
    if v.blocked:  # Xen: an NMI pending is an event to deliver, it wakes the vCPU
        d.wake(v)


# --------------------------------------------------------------------------- dump-core

# libxc's xc_core.h (the file format of docs/misc/dump-core-format.txt)
XC_CORE_MAGIC_HVM = 0xF00FEBEE  # auto-translated physmap: pages are listed by pfn
XEN_DUMPCORE_FORMAT_VERSION = (0 << 32) | 1
XEN_ELFNOTE_DUMPCORE_NONE = 0x2000000
XEN_ELFNOTE_DUMPCORE_HEADER = 0x2000001
XEN_ELFNOTE_DUMPCORE_XEN_VERSION = 0x2000002
XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION = 0x2000003

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SHT_PROGBITS, SHT_STRTAB, SHT_NOTE = 1, 3, 7
SHF_ALLOC = 2


def _note(ntype: int, desc: bytes) -> bytes:
    name = b"Xen\0"
    pad = b"\0" * (-len(desc) % 4)
    return struct.pack("<III", len(name), len(desc), ntype) + name + desc + pad


def _vcpu_context(d: Any, i: int) -> bytes:
    """The vCPU's registers as XEN_DOMCTL_getvcpucontext gives them for an HVM/PVH vCPU
    (Xen's arch_get_info_guest): always the native x86_64 layout, whatever the guest's
    mode (the compat layout is for 32-bit PV domains only), so a 32-bit vCPU's registers
    are zero-extended. The FXSAVE image, debug registers, segment selectors, CR0/2/3/4,
    FS base and the GS bases (kernel/user by CS's RPL); VGCF_in_kernel is PV-only."""
    from ..arch.x86.vcpu_save import KVM_GET_DEBUGREGS, MSR_SHADOW_GS, get_msrs, kvm_debugregs

    ctx = C.vcpu_guest_context()
    v = d.vcpus[i]
    if not v.online:
        return bytes(ctx)
    kv = d.platform.vcpus[i]
    r, s = kv.sync_regs, kv.sync_sregs
    u = ctx.user_regs
    for name in ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax",
                 "rcx", "rdx", "rsi", "rdi", "rip", "rflags", "rsp"):
        setattr(u, name, getattr(r, name))
    for seg in ("cs", "ss", "es", "ds", "fs", "gs"):
        setattr(u, seg, getattr(s, seg).selector)
    ctx.flags = C.VGCF_I387_VALID | C.VGCF_ONLINE
    ctx.ctrlreg[0], ctx.ctrlreg[2], ctx.ctrlreg[3], ctx.ctrlreg[4] = s.cr0, s.cr2, s.cr3, s.cr4
    ctx.fs_base = s.fs.base
    try:  # KVM's own copies (the vCPU is paused: out of KVM_RUN)
        xs = K.kvm_xsave()
        ioctl(kv.fd, K.KVM_GET_XSAVE, xs)
        ctypes.memmove(ctx.fpu_ctxt, ctypes.addressof(xs), 512)
        dr = kvm_debugregs()
        ioctl(kv.fd, KVM_GET_DEBUGREGS, dr)
        for n in range(4):
            ctx.debugreg[n] = dr.db[n]
        ctx.debugreg[6], ctx.debugreg[7] = dr.dr6, dr.dr7
        shadow_gs = get_msrs(kv, [MSR_SHADOW_GS])[MSR_SHADOW_GS]
    except OSError:
        shadow_gs = 0
    if s.cs.selector & 3 == 0:
        ctx.gs_base_kernel, ctx.gs_base_user = s.gs.base, shadow_gs
    else:
        ctx.gs_base_user, ctx.gs_base_kernel = s.gs.base, shadow_gs
    return bytes(ctx)


def _xen_version_desc() -> bytes:
    from .. import XEN_EXTRAVERSION, XEN_MAJOR, XEN_MINOR, __version__
    from ..hypervisor.version import CAPABILITIES

    def cstr(text: str, n: int) -> bytes:
        return text.encode()[:n - 1].ljust(n, b"\0")

    compile_info = (cstr(f"pyxen {__version__}", 64) + cstr("pyxen", 16) + cstr("", 32)
                    + cstr("", 32))
    return (struct.pack("<QQ", XEN_MAJOR, XEN_MINOR) + cstr(XEN_EXTRAVERSION, 16)
            + compile_info + cstr(CAPABILITIES, 1024) + cstr(f"pyxen {__version__}", 64)
            + struct.pack("<QQ", 0xFFFF800000000000, PAGE))


def dump_core(d: Any, path: str) -> dict[str, Any]:
    """Write the domain's core file as libxc's xc_domain_dumpcore does for an
    auto-translated guest: ELF64 ET_CORE, no program headers, sections ``.note.Xen``
    (none, header, xen_version, format_version notes), ``.xen_prstatus`` (one
    vcpu_guest_context per vCPU), ``.xen_shared_info``, ``.xen_pfn`` (uint64 pfn of each
    page) and ``.xen_pages`` (the pages, page-aligned, in .xen_pfn's order). The vCPUs are
    paused only while their registers are read; memory is copied live, as xl does."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError("dump_core needs an absolute 'path'")
    d.pause()
    try:
        prstatus = b"".join(_vcpu_context(d, i) for i in range(d.max_vcpus))
    finally:
        d.unpause()
    gfns = d.memory.p2m.ram_gfns()
    shinfo = b"\0" * PAGE
    if d.shared_info_gpa is not None:
        try:
            shinfo = d.memory.read(d.shared_info_gpa, PAGE)
        except Exception:  # noqa: BLE001 - moved or gone: an empty page, as for none
            pass
    notes = (_note(XEN_ELFNOTE_DUMPCORE_NONE, b"")
             + _note(XEN_ELFNOTE_DUMPCORE_HEADER,
                     struct.pack("<QQQQ", XC_CORE_MAGIC_HVM, d.max_vcpus, len(gfns), PAGE))
             + _note(XEN_ELFNOTE_DUMPCORE_XEN_VERSION, _xen_version_desc())
             + _note(XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION,
                     struct.pack("<Q", XEN_DUMPCORE_FORMAT_VERSION)))
    pfns = struct.pack(f"<{len(gfns)}Q", *gfns)
    names = ["", ".shstrtab", ".note.Xen", ".xen_prstatus", ".xen_shared_info", ".xen_pfn",
             ".xen_pages"]
    strtab = b"\0".join(n.encode() for n in names) + b"\0"
    name_off = {n: strtab.index(n.encode() + b"\0") if n else 0 for n in names}
    ctx_size = ctypes.sizeof(C.vcpu_guest_context)

    # layout: header, section headers, then the sections (pages last, page-aligned)
    off = EHDR.size + SHDR.size * len(names)
    layout: list[tuple[str, int, int, int, int, int, int]] = []  # name type off size align entsize flags

    def place(name: str, stype: int, size: int, align: int, entsize: int, flags: int = 0) -> int:
        nonlocal off
        off = (off + align - 1) // align * align
        layout.append((name, stype, off, size, align, entsize, flags))
        start = off
        off += size
        return start

    o_str = place(".shstrtab", SHT_STRTAB, len(strtab), 1, 0)
    o_note = place(".note.Xen", SHT_NOTE, len(notes), 4, 0)
    o_pr = place(".xen_prstatus", SHT_PROGBITS, len(prstatus), 8, ctx_size, SHF_ALLOC)
    o_si = place(".xen_shared_info", SHT_PROGBITS, PAGE, 8, PAGE, SHF_ALLOC)
    o_pfn = place(".xen_pfn", SHT_PROGBITS, len(pfns), 8, 8, SHF_ALLOC)
    o_pages = place(".xen_pages", SHT_PROGBITS, len(gfns) * PAGE, PAGE, PAGE, SHF_ALLOC)

    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8  # ELF64, LSB, current, SYSV
    ehdr = EHDR.pack(ident, 4, 62, 1, 0, 0, EHDR.size, 0, EHDR.size, 0, 0, SHDR.size,
                     len(names), 1)  # ET_CORE, EM_X86_64, shstrndx 1
    shdrs = [SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for name, stype, o, size, align, entsize, flags in layout:
        shdrs.append(SHDR.pack(name_off[name], stype, flags, 0, o, size, 0, 0, align, entsize))
    tmp = f"{path}.pyxen-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, ehdr + b"".join(shdrs), 0)
        for o, data in ((o_str, strtab), (o_note, notes), (o_pr, prstatus), (o_si, shinfo),
                        (o_pfn, pfns)):
            os.pwrite(fd, data, o)
        mem = d.memory
        batch: list[bytes] = []
        at = o_pages
        for gfn in gfns:
            try:
                batch.append(bytes(mem.page(gfn)))
            except Exception:  # noqa: BLE001 - ballooned out meanwhile: zeros, as a hole
                batch.append(b"\0" * PAGE)
            if len(batch) == 256:
                at += os.pwritev(fd, batch, at)
                batch = []
        if batch:
            os.pwritev(fd, batch, at)
        os.ftruncate(fd, off)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return {"pages": len(gfns), "bytes": off}


# --------------------------------------------------------------------------- counters


def dev_stats(backends: list[Any]) -> dict[str, Any]:
    """The device backends' counters, as xentop reads them from Linux's backends: per vbd
    Linux blkback's statistics/ (oo_req, rd_req, wr_req, rd_sect, wr_sect); per vif the
    host interface's (its received bytes are what the guest sent: xenstat swaps them)."""
    vbds, vifs = [], []
    for bus in backends:
        for (kind, devid), dev in sorted(getattr(bus, "devices", {}).items()):
            stats = getattr(dev, "stats", None)
            if kind == "vbd" and isinstance(stats, dict):
                vbds.append({"devid": devid, **stats})
            elif kind == "vif":
                ifname = getattr(getattr(dev, "vif", None), "ifname", None)
                row = {"devid": devid, "ifname": ifname}
                for key, node in (("tx_bytes", "rx_bytes"), ("tx_packets", "rx_packets"),
                                  ("rx_bytes", "tx_bytes"), ("rx_packets", "tx_packets")):
                    try:
                        with open(f"/sys/class/net/{ifname}/statistics/{node}") as f:
                            row[key] = int(f.read())
                    except (OSError, ValueError, TypeError):
                        row[key] = 0
                vifs.append(row)
    return {"vbds": vbds, "vifs": vifs}
