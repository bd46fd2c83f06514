"""Instructions the host's KVM cannot emulate, executed with the unicorn CPU emulator.

On hosts where guest ring 0 runs in KVM's own instruction emulator (PLATFORM.md: nested
"kvm_pvm"), that emulator lacks some instructions (ldmxcsr, SSE arithmetic, movq
xmm<->r64, cmpxchg16b, popcnt, xgetbv, rdtscp, stac, ...) and exits with
KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION, the vCPU intact at the
instruction. Xen on such a host would not exist: on real hardware the CPU runs these
natively. So the guest must see exactly what the CPU would have done, only slower:

- one instruction runs in unicorn on the vCPU's registers (GPRs, RIP, RFLAGS, FS/GS
  bases, XMM0-15 and MXCSR from KVM_GET_XSAVE) and on guest memory mapped page by page
  (zero-copy) through the guest's own page tables, with their permissions (R/W, U/S, NX,
  CR0.WP, SMEP, SMAP) and accessed/dirty bits; only guest RAM is ever mapped;
- a fault becomes the exception the CPU raises (#PF with CR2 and error code, #GP(0) for a
  non-canonical address, whatever unicorn raises otherwise), injected into the guest
  with KVM_SET_VCPU_EVENTS; an undefined instruction is #UD;
- what changed is written back (registers, XSAVE only if XMM/MXCSR changed), RIP moves on;
- what must reflect the guest's view rather than unicorn's is done here: rdtscp/rdpid
  (guest TSC, TSC_AUX), xgetbv (the guest's XCR0), ldmxcsr's reserved-bit #GP (the vCPU's
  MXCSR_MASK), and lock cmpxchg16b (a real atomic 16-byte compare-exchange on guest RAM,
  as other vCPUs run concurrently).

Each domain counts what it emulated per mnemonic (shown by `xl debug-keys q`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import capstone
from capstone import x86_const as CX
from unicorn import (
    UC_ARCH_X86,
    UC_ERR_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_PROT,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_16,
    UC_MODE_32,
    UC_MODE_64,
    UC_PROT_EXEC,
    UC_PROT_NONE,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn import x86_const as UX
from unicorn.unicorn_py3.unicorn import uclib as _uclib

from ...hypervisor import atomic
from ...hypervisor.memory import PAGE_SIZE, GuestMemory
from . import kvm_abi as K
from .kvm import KvmError, ioctl
from .paging import (
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_LA57,
    EFER_LMA,
    PTE_A,
    PTE_D,
    NotPresent,
    PagingState,
    walk,
)

if TYPE_CHECKING:
    from ...hypervisor.domain import Domain
    from .kvm import Vcpu

# exception vectors
DE, UD, NM, SS, GP, PF = 0, 6, 7, 12, 13, 14
_HAS_ERROR_CODE = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}
# #PF error code bits
PF_P, PF_W, PF_U, PF_RSVD, PF_I = 1, 2, 4, 8, 16

CR0_MP, CR0_EM, CR0_TS = 1 << 1, 1 << 2, 1 << 3
CR4_TSD, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 2, 1 << 9, 1 << 10
CR4_FSGSBASE, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP = 1 << 16, 1 << 18, 1 << 20, 1 << 21
RFLAGS_AC = 1 << 18
MSR_IA32_TSC = 0x10
MSR_TSC_AUX = 0xC0000103
MAX_INSN = 15
_HIGH16 = 0xFFFF << 48
_MAX_CPUID = 256
_EMULATION_FLAG_INSTRUCTION_BYTES = 1
_UC_CR4_BITS = (1 << 2) | (1 << 9) | (1 << 10) | (1 << 16) | (1 << 18)  # TSD OSFXSR
# OSXMMEXCPT FSGSBASE OSXSAVE: what changes an SSE/x87/FSGSBASE instruction's behaviour
_CPUID_SIGNIFICANT_INDEX = 1

# XSAVE image offsets (Intel SDM vol. 1, 13.4)
XS_MXCSR, XS_MXCSR_MASK, XS_XMM, XS_XSTATE_BV = 24, 28, 160, 512
XSTATE_SSE = 1 << 1
MXCSR_MASK_DEFAULT = 0xFFBF

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_UC_GPR64 = [getattr(UX, f"UC_X86_REG_{n.upper()}") for n in _GPRS]
_UC_GPR32 = _UC_GPR64[:8]
_UC_XMM = [getattr(UX, f"UC_X86_REG_XMM{i}") for i in range(16)]
# One C call moves a whole register set (the Python binding costs ~2 us per register):
# GPRs + flags (+ FS/GS base in 64-bit mode), and XMM0-15 + MXCSR straight from and to
# the XSAVE image (same little-endian layout as unicorn's values).
_UC_STATE64 = _UC_GPR64 + [UX.UC_X86_REG_RFLAGS, UX.UC_X86_REG_FS_BASE, UX.UC_X86_REG_GS_BASE]
_UC_STATE32 = [getattr(UX, f"UC_X86_REG_E{n[1:].upper()}") for n in _GPRS[:8]] + \
    [UX.UC_X86_REG_EFLAGS]
_UC_SSE = _UC_XMM + [UX.UC_X86_REG_MXCSR]
_SSE_OFFSETS = [XS_XMM + 16 * i for i in range(16)] + [XS_MXCSR]
# capstone register name -> kvm_regs field, for effective addresses and rdpid's operand
_CS_GPR = {n: n for n in _GPRS}
_CS_GPR.update({f"e{n[1:]}": n for n in _GPRS[:8]})
_CS_GPR.update({f"r{i}d": f"r{i}" for i in range(8, 16)})

# CPU model for unicorn: one with every instruction KVM's emulator is known to lack
# (SSE4.2/POPCNT, CX16, XSAVE, RDTSCP, SMAP). Hardware would run the host CPU's.
_UC_CPU_MODEL = UX.UC_CPU_X86_ICELAKE_SERVER


# instructions that use SSE state without naming an XMM register
_SSE_STATE_INSNS = {"ldmxcsr", "stmxcsr", "fxsave", "fxsave64", "fxrstor", "fxrstor64",
                    "xsave", "xsave64", "xsaveopt", "xsaveopt64", "xsavec", "xsavec64",
                    "xrstor", "xrstor64"}


class CannotEmulate(Exception):
    """A valid instruction pyxen cannot execute faithfully: the domain crashes (as it did
    before this module), with this reason in the crash report."""


@dataclass
class _Fault:
    vector: int
    error_code: int = 0
    cr2: int | None = None


@dataclass(frozen=True)
class _Decoded:
    mnemonic: str
    size: int
    mem: tuple[tuple[str, str, str, int, int], ...]  # (segment, base, index, scale, disp)
    regs: tuple[str, ...]  # register operands by capstone name
    sse: bool  # uses XMM registers or MXCSR


class _Raise(Exception):  # noqa: N818 - internal control flow: deliver this fault
    def __init__(self, fault: _Fault) -> None:
        self.fault = fault


def _load_cas16() -> ctypes._CFuncPtr | None:
    """libatomic's generic compare-exchange: for 16 aligned bytes it is `lock cmpxchg16b`
    on x86-64 CPUs that have it (as they all do where this path is taken)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("atomic") or "libatomic.so.1")
    except OSError:
        return None
    fn = lib.__atomic_compare_exchange
    fn.argtypes = [ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_bool
    return fn


_cas16 = _load_cas16()


class _Cpu:
    """One vCPU's unicorn instances (one per mode), used only by that vCPU's thread."""

    def __init__(self) -> None:
        self.ucs: dict[int, Uc] = {}
        self.crs: dict[int, tuple[int, int]] = {}  # mode -> (CR0, CR4) last given
        self.mapped: dict[int, int] = {}  # unicorn page -> leaf PTE gpa (0: none)
        self.dirty: set[int] = set()
        self.fault: _Fault | None = None
        self.ctx: _Ctx | None = None
        n = len(_UC_STATE64)
        self.state_in = (ctypes.c_uint64 * n)()
        self.state_out = (ctypes.c_uint64 * n)()
        self.xsave = K.kvm_xsave()
        self.sse_out = K.kvm_xsave()  # only the XMM/MXCSR bytes are used
        self.batches = {
            mode: (ids, self._ptrs(ctypes.addressof(self.state_in), range(0, 8 * len(ids), 8)),
                   self._ptrs(ctypes.addressof(self.state_out), range(0, 8 * len(ids), 8)))
            for mode, ids in ((UC_MODE_64, _UC_STATE64), (UC_MODE_32, _UC_STATE32),
                              (UC_MODE_16, _UC_STATE32))}
        self.sse_ids = (ctypes.c_int * len(_UC_SSE))(*_UC_SSE)
        self.sse_in = self._ptrs(ctypes.addressof(self.xsave), _SSE_OFFSETS)
        self.sse_rd = self._ptrs(ctypes.addressof(self.sse_out), _SSE_OFFSETS)
        self.batches = {m: ((ctypes.c_int * len(ids))(*ids), pin, pout)
                        for m, (ids, pin, pout) in self.batches.items()}

    @staticmethod
    def _ptrs(base: int, offsets: range | list[int]) -> ctypes.Array:
        return (ctypes.c_void_p * len(offsets))(*(base + o for o in offsets))

    def uc(self, mode: int) -> Uc:
        uc = self.ucs.get(mode)
        if uc is None:
            uc = Uc(UC_ARCH_X86, mode)
            uc.ctl_set_cpu_model(_UC_CPU_MODEL)
            uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
            uc.hook_add(UC_HOOK_MEM_PROT, self._on_prot)
            uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write)
            uc.hook_add(UC_HOOK_INTR, self._on_intr)
            self.ucs[mode] = uc
        return uc

    # unicorn callbacks: they must not raise; a fault is recorded and the access refused

    def _on_unmapped(self, uc: Uc, access: int, addr: int, size: int, value: int,
                     data: object) -> bool:
        ctx = self.ctx
        assert ctx is not None
        kind = "x" if access == UC_MEM_FETCH_UNMAPPED else (
            "w" if access == UC_MEM_WRITE_UNMAPPED else "r")
        page = addr & ~0xFFF
        try:
            hva, prot, leaf = ctx.map_page(ctx.linear(addr), kind)
        except _Raise as r:
            self.fault = r.fault
            return False
        except CannotEmulate as e:
            ctx.cannot = str(e)
            return False
        uc.mem_map_ptr(page, PAGE_SIZE, prot, hva)
        self.mapped[page] = leaf
        return True

    def _on_prot(self, uc: Uc, access: int, addr: int, size: int, value: int,
                 data: object) -> bool:
        ctx = self.ctx
        assert ctx is not None
        kind = "x" if access == UC_MEM_FETCH_PROT else (
            "w" if access == UC_MEM_WRITE_PROT else "r")
        self.fault = _Fault(PF, ctx.pf_error(kind, present=True), ctx.linear(addr))
        return False

    def _on_write(self, uc: Uc, access: int, addr: int, size: int, value: int,
                  data: object) -> None:
        page = addr & ~0xFFF
        if page not in self.dirty:
            self.dirty.add(page)
        end = (addr + size - 1) & ~0xFFF
        if end != page:
            self.dirty.add(end)

    def _on_intr(self, uc: Uc, intno: int, data: object) -> None:
        if self.fault is None:
            if intno < 32:  # an exception the instruction raised (#GP, #NM, #XM, ...)
                self.fault = _Fault(intno)
            elif self.ctx is not None:
                self.ctx.cannot = f"software interrupt {intno:#x}"
        uc.emu_stop()

    def unmap_all(self, uc: Uc) -> None:
        for page in self.mapped:
            uc.mem_unmap(page, PAGE_SIZE)
        self.mapped.clear()
        self.dirty.clear()


class _Ctx:
    """The state of one emulation: the vCPU's registers and how it sees memory."""

    def __init__(self, mem: GuestMemory, regs: K.kvm_regs, sregs: K.kvm_sregs, mode: int) -> None:
        self.mem = mem
        self.regs = regs
        self.sregs = sregs
        self.mode = mode
        self.cpl = sregs.ss.dpl if sregs.cr0 & CR0_PE else 0
        self.paging = PagingState(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)
        self.cannot: str | None = None
        self.name = "(bad)"  # the mnemonic, once decoded

    def linear(self, uc_addr: int) -> int:
        """unicorn keeps 48-bit addresses: sign-extend them back to the guest's."""
        if self.mode == UC_MODE_64:
            return uc_addr | _HIGH16 if uc_addr >> 47 & 1 else uc_addr
        return uc_addr & 0xFFFFFFFF

    def pf_error(self, kind: str, present: bool, reserved: bool = False) -> int:
        s = self.sregs
        code = (PF_P if present else 0) | (PF_W if kind == "w" else 0)
        code |= PF_U if self.cpl == 3 else 0
        code |= PF_RSVD if reserved else 0
        if kind == "x" and (s.efer & (1 << 11) or s.cr4 & CR4_SMEP):
            code |= PF_I
        return code

    def map_page(self, va: int, kind: str) -> tuple[int, int, int]:
        """(host address, unicorn protection, leaf entry gpa) of the page at linear va,
        checked as the CPU checks an access of this kind; _Raise(#PF) if it faults."""
        s = self.sregs
        try:
            m = walk(self.mem.read, self.paging, va)
        except NotPresent as e:
            # a not-present entry is P=0; a reserved bit set is P=1, RSVD=1
            raise _Raise(_Fault(PF, self.pf_error(kind, e.reserved, e.reserved), va)) from None
        except Exception:  # a page table outside RAM: the walk cannot complete
            raise CannotEmulate(f"page walk for {va:#x} reads outside guest RAM") from None
        user_mode = self.cpl == 3
        paging = bool(s.cr0 & CR0_PG)
        readable = writable = executable = True
        if paging:
            if user_mode:
                readable = m.user
                writable = m.user and m.writable
                executable = m.user and m.executable
            else:
                writable = m.writable or not s.cr0 & CR0_WP
                executable = m.executable and not (m.user and s.cr4 & CR4_SMEP)
                if m.user and s.cr4 & CR4_SMAP and not self.regs.rflags & RFLAGS_AC:
                    readable = writable = False
        allowed = {"r": readable, "w": writable, "x": executable}[kind]
        if not allowed:
            raise _Raise(_Fault(PF, self.pf_error(kind, present=True), va))
        gpa_page = m.gpa & ~0xFFF
        hva = self.hva(gpa_page)
        # the CPU sets the accessed bits of the path (and dirty on a write: see _on_write)
        for e in m.entries:
            self.set_pte_bits(e, PTE_A)
        prot = (UC_PROT_READ if readable else UC_PROT_NONE) | \
            (UC_PROT_WRITE if writable else 0) | (UC_PROT_EXEC if executable else 0)
        return hva, prot, (m.entries[-1] if m.entries else 0)

    def hva(self, gpa_page: int) -> int:
        mem = self.mem
        for r in mem.regions:
            if r.gpa <= gpa_page and gpa_page + PAGE_SIZE <= r.gpa + r.size:
                return mem.hva + r.offset + gpa_page - r.gpa
        raise CannotEmulate(f"emulated access to guest-physical {gpa_page:#x}, which is not "
                            "RAM (MMIO is not emulated here)")

    def set_pte_bits(self, pte_gpa: int, bits: int) -> None:
        try:
            base = self.hva(pte_gpa & ~0xFFF)
        except CannotEmulate:
            return
        atomic.fetch_or8(base + (pte_gpa & 0xFFF), bits)


class InstructionEmulator:
    """A domain's emulator of the instructions its host's KVM cannot emulate."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.counts: Counter[str] = Counter()
        self.total_ns = 0
        self.faults = 0
        self._lock = threading.Lock()
        self._cpus: dict[int, _Cpu] = {}
        self._decoders: dict[int, capstone.Cs] = {}
        self._decoded: dict[tuple[int, bytes], _Decoded | None] = {}
        self._cpuid_tables: dict[int, dict[tuple[int, int], tuple[int, int, int, int]]] = {}

    # --- public ------------------------------------------------------------------------

    def emulate(self, vcpu_id: int, kv: Vcpu) -> None:
        """Execute the instruction at the vCPU's RIP (or deliver its fault) and leave the
        vCPU ready to resume; CannotEmulate if that cannot be done faithfully."""
        t0 = time.perf_counter_ns()
        regs, sregs = _get_state(kv)
        ctx = _Ctx(self.domain.memory, regs, sregs, self._mode(sregs))
        faulted = False
        try:
            self._run(vcpu_id, kv, ctx)
        except _Raise as r:
            self._inject(kv, sregs, r.fault)
            faulted = True
        dt = time.perf_counter_ns() - t0  # not reached when it could not be emulated
        with self._lock:
            self.total_ns += dt
            self.counts[ctx.name] += 1
            self.faults += faulted

    def dump_lines(self) -> list[str]:
        """For the 'q' domain dump: what was emulated, per mnemonic, and what it cost."""
        with self._lock:
            counts, total_ns, faults = dict(self.counts), self.total_ns, self.faults
        n = sum(counts.values())
        if not n:
            return []
        lines = [f"    Instructions emulated (host KVM cannot): {n}, {faults} faulted, "
                 f"{total_ns / n / 1000:.1f} us each"]
        for name, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"      {name}: {c}")
        return lines

    # --- the emulation -----------------------------------------------------------------

    def _mode(self, sregs: K.kvm_sregs) -> int:
        if not sregs.cr0 & CR0_PE:
            return UC_MODE_16
        if sregs.efer & EFER_LMA and sregs.cs.l:
            return UC_MODE_64
        return UC_MODE_32 if sregs.cs.db else UC_MODE_16

    def _decode(self, mode: int, code: bytes, rip: int) -> _Decoded | None:
        key = (mode, code)
        hit = self._decoded.get(key, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        cs = self._decoders.get(mode)
        if cs is None:
            cs = capstone.Cs(capstone.CS_ARCH_X86, {UC_MODE_16: capstone.CS_MODE_16,
                                                    UC_MODE_32: capstone.CS_MODE_32,
                                                    UC_MODE_64: capstone.CS_MODE_64}[mode])
            cs.detail = True
            self._decoders[mode] = cs
        insn = next(cs.disasm(code, 0, 1), None)
        if insn is None:
            d = None
        else:
            mem, regs = [], []
            read, written = insn.regs_access()
            sse = insn.mnemonic.removeprefix("lock ") in _SSE_STATE_INSNS or any(
                cs.reg_name(r).startswith(("xmm", "ymm", "mxcsr")) for r in (*read, *written))
            for op in insn.operands:
                if op.type == CX.X86_OP_MEM:
                    m = op.mem
                    mem.append((cs.reg_name(m.segment) if m.segment else "",
                                cs.reg_name(m.base) if m.base else "",
                                cs.reg_name(m.index) if m.index else "", m.scale, m.disp))
                elif op.type == CX.X86_OP_REG:
                    regs.append(cs.reg_name(op.reg))
            d = _Decoded(insn.mnemonic, insn.size, tuple(mem), tuple(regs), sse)
        if len(self._decoded) > 4096:
            self._decoded.clear()
        self._decoded[key] = d
        return d

    def _fetch(self, ctx: _Ctx, va: int) -> tuple[bytes, _Fault | None]:
        """Up to 15 instruction bytes at linear va, and the fault that cut them short."""
        out = b""
        while len(out) < MAX_INSN:
            want = min(MAX_INSN - len(out), PAGE_SIZE - (va & 0xFFF))
            try:
                hva, _prot, _leaf = ctx.map_page(va, "x")
            except _Raise as r:
                return out, r.fault
            out += ctypes.string_at(hva + (va & 0xFFF), want)
            va = ctx.linear(va + want) if ctx.mode != UC_MODE_64 else \
                (va + want) & ((1 << 64) - 1)
        return out, None

    def _ea(self, ctx: _Ctx, d: _Decoded, op: tuple[str, str, str, int, int]) -> int:
        seg, base, index, scale, disp = op
        r = ctx.regs
        v = disp

        def reg(name: str) -> int:
            if name == "rip":
                return r.rip + d.size
            if name == "eip":
                return (r.rip + d.size) & 0xFFFFFFFF
            g = _CS_GPR.get(name)
            if g is None:
                raise CannotEmulate(f"address register {name}")
            val = getattr(r, g)
            return val & 0xFFFFFFFF if name != g else val

        if base:
            v += reg(base)
        if index:
            v += reg(index) * scale
        if ctx.mode == UC_MODE_64:
            v &= (1 << 64) - 1
            if seg in ("fs", "gs"):
                v = (v + getattr(ctx.sregs, seg).base) & ((1 << 64) - 1)
            return v
        v &= 0xFFFFFFFF
        seg = seg or ("ss" if base in ("esp", "ebp", "sp", "bp") else "ds")
        return (v + getattr(ctx.sregs, seg).base) & 0xFFFFFFFF

    def _run(self, vcpu_id: int, kv: Vcpu, ctx: _Ctx) -> None:
        regs, sregs, mode = ctx.regs, ctx.sregs, ctx.mode
        if ctx.cpl != 0:
            raise CannotEmulate(f"instruction at CPL {ctx.cpl} (only ring 0 is emulated)")
        if sregs.cr4 & CR4_LA57:
            raise CannotEmulate("5-level paging")
        if mode == UC_MODE_64:
            pc = regs.rip
        else:
            pc = (sregs.cs.base + (regs.rip & 0xFFFFFFFF)) & 0xFFFFFFFF
        code, fetch_fault = _exit_insn_bytes(kv), None
        d = self._decode(mode, code, pc) if code else None
        if d is None:  # no bytes from KVM, or they do not decode: fetch them ourselves
            code, fetch_fault = self._fetch(ctx, pc)
            d = self._decode(mode, code, pc) if code else None
        if d is None:
            if fetch_fault is not None:
                raise _Raise(fetch_fault)
            raise _Raise(_Fault(UD))
        ctx.name = d.mnemonic
        if mode == UC_MODE_64:
            for op in d.mem:
                ea = self._ea(ctx, d, op)
                if ((ea >> 47) + 1) >> 1 != 0 and ea >> 47 != 0x1FFFF:
                    base = op[1]
                    raise _Raise(_Fault(SS if base in ("rsp", "rbp") else GP, 0))
        ctx.name = d.mnemonic
        special = _SPECIAL.get(d.mnemonic.removeprefix("lock ").removeprefix("rep "))
        if special is not None:
            special(self, kv, ctx, d)
        else:
            self._unicorn(vcpu_id, kv, ctx, d, pc)

    def _unicorn(self, vcpu_id: int, kv: Vcpu, ctx: _Ctx, d: _Decoded, pc: int) -> None:
        regs, sregs, mode = ctx.regs, ctx.sregs, ctx.mode
        if mode != UC_MODE_64:
            real = not sregs.cr0 & CR0_PE
            for seg in ("cs", "ds", "es", "ss"):
                sr = getattr(sregs, seg)
                if sr.base != (sr.selector << 4 if real else 0):
                    raise CannotEmulate(f"{seg} base {sr.base:#x} outside 64-bit mode")
        cpu = self._cpus.get(vcpu_id)
        if cpu is None:
            cpu = self._cpus[vcpu_id] = _Cpu()
        uc = cpu.uc(mode)
        uch = uc._uch
        ids, ptr_in, ptr_out = cpu.batches[mode]
        n = len(ids)
        state = [getattr(regs, g) for g in _GPRS[:n - 3 if mode == UC_MODE_64 else 8]]
        state.append(regs.rflags)
        if mode == UC_MODE_64:
            state += [sregs.fs.base, sregs.gs.base]
        cpu.state_in[:n] = state
        _uclib.uc_reg_write_batch(uch, ids, ptr_in, n)
        if mode == UC_MODE_16 and not sregs.cr0 & CR0_PE:
            for seg, ucr in (("cs", UX.UC_X86_REG_CS), ("ds", UX.UC_X86_REG_DS),
                             ("es", UX.UC_X86_REG_ES), ("ss", UX.UC_X86_REG_SS)):
                uc.reg_write(ucr, getattr(sregs, seg).selector)
        # the control bits that change what an SSE/x87 instruction does
        crs = (sregs.cr0 & (CR0_MP | CR0_EM | CR0_TS), sregs.cr4 & _UC_CR4_BITS)
        if cpu.crs.get(mode) != crs:
            cr0 = uc.reg_read(UX.UC_X86_REG_CR0) & ~(CR0_MP | CR0_EM | CR0_TS)
            uc.reg_write(UX.UC_X86_REG_CR0, cr0 | crs[0])
            uc.reg_write(UX.UC_X86_REG_CR4, (uc.reg_read(UX.UC_X86_REG_CR4) & ~_UC_CR4_BITS)
                         | crs[1])
            cpu.crs[mode] = crs
        xs = None
        if d.sse:
            ioctl(kv.fd, K.KVM_GET_XSAVE, cpu.xsave)
            xs = memoryview(cpu.xsave).cast("B")
            _uclib.uc_reg_write_batch(uch, cpu.sse_ids, cpu.sse_in, len(_UC_SSE))
        start = regs.rip if mode == UC_MODE_64 else regs.rip & 0xFFFFFFFF
        cpu.ctx, cpu.fault = ctx, None
        err: UcError | None = None
        try:
            uc.emu_start(start, 0xFFFFFFFFFFFFFFFF if mode == UC_MODE_64 else 0xFFFFFFFF,
                         count=1)
        except UcError as e:
            err = e
        try:
            if ctx.cannot:
                raise CannotEmulate(ctx.cannot)
            if cpu.fault is not None:
                raise _Raise(cpu.fault)
            if err is not None:
                if err.errno == UC_ERR_INSN_INVALID:
                    raise _Raise(_Fault(UD))
                raise CannotEmulate(f"unicorn: {err}")
            sse_changed = False
            if xs is not None:
                _uclib.uc_reg_read_batch(uch, cpu.sse_ids, cpu.sse_rd, len(_UC_SSE))
                out = memoryview(cpu.sse_out).cast("B")
                new_mxcsr = struct.unpack_from("<I", out, XS_MXCSR)[0]
                mask = struct.unpack_from("<I", xs, XS_MXCSR_MASK)[0] or MXCSR_MASK_DEFAULT
                if new_mxcsr & ~mask:
                    raise _Raise(_Fault(GP, 0))  # a reserved MXCSR bit (ldmxcsr, fxrstor)
                if out[XS_MXCSR:XS_MXCSR + 4] != xs[XS_MXCSR:XS_MXCSR + 4] or \
                        out[XS_XMM:XS_XMM + 256] != xs[XS_XMM:XS_XMM + 256]:
                    xs[XS_MXCSR:XS_MXCSR + 4] = out[XS_MXCSR:XS_MXCSR + 4]
                    xs[XS_XMM:XS_XMM + 256] = out[XS_XMM:XS_XMM + 256]
                    bv = struct.unpack_from("<Q", xs, XS_XSTATE_BV)[0]
                    struct.pack_into("<Q", xs, XS_XSTATE_BV, bv | XSTATE_SSE)
                    sse_changed = True
            # the instruction has completed: its writes are in guest RAM already; now the
            # dirty bits of the pages written, then registers and SSE state
            for page in cpu.dirty:
                leaf = cpu.mapped.get(page)
                if leaf:
                    ctx.set_pte_bits(leaf, PTE_D)
            _uclib.uc_reg_read_batch(uch, ids, ptr_out, n)
            out_state = cpu.state_out[:n]
            for i, (old, new) in enumerate(zip(state, out_state, strict=False)):
                if new != old:
                    if i < len(out_state) - (3 if mode == UC_MODE_64 else 1):
                        setattr(regs, _GPRS[i], new)
                    elif i == len(out_state) - (3 if mode == UC_MODE_64 else 1):
                        regs.rflags = new
                    else:
                        raise CannotEmulate("the instruction changed FS/GS base")
            new_rip = uc.reg_read(UX.UC_X86_REG_RIP)
            regs.rip = new_rip if mode == UC_MODE_64 else new_rip & 0xFFFFFFFF
            _set_regs(kv, regs)
            if sse_changed:
                ioctl(kv.fd, K.KVM_SET_XSAVE, cpu.xsave)
        finally:
            cpu.unmap_all(uc)
            cpu.ctx = None
            # translated code is cached by address: the next instruction there may differ
            page = pc & ~0xFFF & ((1 << 48) - 1)
            uc.ctl_remove_cache(page, page + 2 * PAGE_SIZE)

    def _inject(self, kv: Vcpu, sregs: K.kvm_sregs, f: _Fault) -> None:
        """Deliver f to the guest at the instruction (RIP unchanged), as the CPU would."""
        if f.cr2 is not None:
            sregs.cr2 = f.cr2
            _set_sregs(kv, sregs)
        ev = K.kvm_vcpu_events()
        ioctl(kv.fd, K.KVM_GET_VCPU_EVENTS, ev)
        ev.exception.injected = 1
        ev.exception.pending = 0
        ev.exception.nr = f.vector
        ev.exception.has_error_code = int(f.vector in _HAS_ERROR_CODE)
        ev.exception.error_code = f.error_code
        ev.exception_has_payload = 0
        ev.exception_payload = 0
        ev.flags = 0
        ioctl(kv.fd, K.KVM_SET_VCPU_EVENTS, ev)

    # --- instructions done here rather than in unicorn ----------------------------------

    def _next(self, kv: Vcpu, ctx: _Ctx, d: _Decoded) -> None:
        r = ctx.regs
        r.rip = (r.rip + d.size) & (((1 << 64) - 1) if ctx.mode == UC_MODE_64 else 0xFFFFFFFF)
        _set_regs(kv, r)

    def _cpuid(self, kv: Vcpu, leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        """The vCPU's own CPUID (as KVM_SET_CPUID2 gave it): what it may use."""
        table = self._cpuid_tables.get(kv.id)
        if table is None:
            buf = K.kvm_cpuid2(_MAX_CPUID)()
            buf.nent = _MAX_CPUID
            ioctl(kv.fd, K.KVM_GET_CPUID2, buf)
            table = {}
            for e in buf.entries[:buf.nent]:
                idx = e.index if e.flags & _CPUID_SIGNIFICANT_INDEX else 0
                table[(e.function, idx)] = (e.eax, e.ebx, e.ecx, e.edx)
            self._cpuid_tables[kv.id] = table
        return table.get((leaf, sub), (0, 0, 0, 0))

    def _rdtscp(self, kv: Vcpu, ctx: _Ctx, d: _Decoded) -> None:
        # a CPU whose hypervisor hides RDTSCP raises #UD (VMX: "enable RDTSCP" clear)
        if not self._cpuid(kv, 0x80000001)[3] & (1 << 27):
            raise _Raise(_Fault(UD))
        if ctx.sregs.cr4 & CR4_TSD and ctx.cpl:
            raise _Raise(_Fault(GP, 0))
        tsc = kv.get_msr(MSR_IA32_TSC)
        r = ctx.regs
        r.rax, r.rdx, r.rcx = tsc & 0xFFFFFFFF, (tsc >> 32) & 0xFFFFFFFF, _tsc_aux(kv)
        self._next(kv, ctx, d)

    def _rdpid(self, kv: Vcpu, ctx: _Ctx, d: _Decoded) -> None:
        if not self._cpuid(kv, 7)[2] & (1 << 22):
            raise _Raise(_Fault(UD))
        g = _CS_GPR.get(d.regs[0]) if d.regs else None
        if g is None:
            raise _Raise(_Fault(UD))
        setattr(ctx.regs, g, _tsc_aux(kv))
        self._next(kv, ctx, d)

    def _xgetbv(self, kv: Vcpu, ctx: _Ctx, d: _Decoded) -> None:
        if not ctx.sregs.cr4 & CR4_OSXSAVE:
            raise _Raise(_Fault(UD))
        r = ctx.regs
        which = r.rcx & 0xFFFFFFFF
        xcrs = K.kvm_xcrs()
        ioctl(kv.fd, K.KVM_GET_XCRS, xcrs)
        xcr0 = next((xcrs.xcrs[i].value for i in range(min(xcrs.nr_xcrs, 16))
                     if xcrs.xcrs[i].xcr == 0), 1)
        if which == 0:
            value = xcr0
        elif which == 1:  # XINUSE: the components not in their initial state
            xsave = K.kvm_xsave()
            ioctl(kv.fd, K.KVM_GET_XSAVE, xsave)
            value = xcr0 & struct.unpack_from("<Q", memoryview(xsave).cast("B"),
                                              XS_XSTATE_BV)[0]
        else:
            raise _Raise(_Fault(GP, 0))
        r.rax, r.rdx = value & 0xFFFFFFFF, value >> 32
        self._next(kv, ctx, d)

    def _cmpxchg16b(self, kv: Vcpu, ctx: _Ctx, d: _Decoded) -> None:
        if ctx.mode != UC_MODE_64 or not d.mem or _cas16 is None:
            raise CannotEmulate("cmpxchg16b outside 64-bit mode")
        va = self._ea(ctx, d, d.mem[0])
        if va & 15:
            raise _Raise(_Fault(GP, 0))
        # a locked read-modify-write: the CPU checks write access even when it fails
        hva, _prot, leaf = ctx.map_page(va, "w")
        ptr = hva + (va & 0xFFF)
        r = ctx.regs
        expected = (ctypes.c_uint64 * 2)(r.rax, r.rdx)
        desired = (ctypes.c_uint64 * 2)(r.rbx, r.rcx)
        ok = _cas16(16, ptr, ctypes.addressof(expected), ctypes.addressof(desired), 5, 5)
        if leaf:
            ctx.set_pte_bits(leaf, PTE_D)
        if ok:
            r.rflags |= 1 << 6  # ZF
        else:
            r.rflags &= ~(1 << 6)
            r.rax, r.rdx = expected[0], expected[1]
        self._next(kv, ctx, d)


_SYNC = K.KVM_SYNC_X86_REGS | K.KVM_SYNC_X86_SREGS


def _get_state(kv: Vcpu) -> tuple[K.kvm_regs, K.kvm_sregs]:
    """The registers at the exit: from kvm_run's sync area when KVM fills it (no ioctl)."""
    if kv.run_struct.kvm_valid_regs & _SYNC == _SYNC:
        return (K.kvm_regs.from_buffer_copy(kv.sync_regs),
                K.kvm_sregs.from_buffer_copy(kv.sync_sregs))
    return kv.get_regs(), kv.get_sregs()


def _set_regs(kv: Vcpu, regs: K.kvm_regs) -> None:
    run = kv.run_struct
    if run.kvm_valid_regs & _SYNC == _SYNC:
        ctypes.memmove(ctypes.addressof(kv.sync_regs), ctypes.addressof(regs),
                       ctypes.sizeof(regs))
        run.kvm_dirty_regs |= K.KVM_SYNC_X86_REGS
    else:
        kv.set_regs(regs)


def _set_sregs(kv: Vcpu, sregs: K.kvm_sregs) -> None:
    run = kv.run_struct
    if run.kvm_valid_regs & _SYNC == _SYNC:
        ctypes.memmove(ctypes.addressof(kv.sync_sregs), ctypes.addressof(sregs),
                       ctypes.sizeof(sregs))
        run.kvm_dirty_regs |= K.KVM_SYNC_X86_SREGS
    else:
        kv.set_sregs(sregs)


def _exit_insn_bytes(kv: Vcpu) -> bytes:
    """The instruction bytes KVM reports with an emulation failure (struct
    emulation_failure: flags, then insn_size and up to 15 bytes), b"" if none."""
    ie = kv.run_struct.u.internal
    if ie.ndata < 3 or not ie.data[0] & _EMULATION_FLAG_INSTRUCTION_BYTES:
        return b""
    raw = bytes(ie.data[1].to_bytes(8, "little") + ie.data[2].to_bytes(8, "little"))
    return raw[1:1 + min(raw[0], MAX_INSN)]


def _tsc_aux(kv: Vcpu) -> int:
    try:
        return kv.get_msr(MSR_TSC_AUX) & 0xFFFFFFFF
    except KvmError:
        return 0


_SPECIAL = {
    "rdtscp": InstructionEmulator._rdtscp,
    "rdpid": InstructionEmulator._rdpid,
    "xgetbv": InstructionEmulator._xgetbv,
    "cmpxchg16b": InstructionEmulator._cmpxchg16b,
}


def emulate_instruction(domain: Domain, vcpu_id: int, kv: Vcpu) -> str | None:
    """KVM_INTERNAL_ERROR_EMULATION: run the instruction for KVM. None when the vCPU can
    resume (the instruction done, or its fault injected); else why it cannot."""
    em = domain.emulation
    if em is None:
        em = domain.emulation = InstructionEmulator(domain)
    try:
        em.emulate(vcpu_id, kv)
    except CannotEmulate as e:
        return str(e)
    return None
