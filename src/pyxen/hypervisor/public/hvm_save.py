"""xen/hvm/save.h and xen/arch-x86/hvm/save.h: Xen's HVM save format (the HVM context a
toolstack gets with XEN_DOMCTL_gethvmcontext and carries in the migration stream's
HVM_CONTEXT record): a sequence of descriptor + record, ended by END."""

from __future__ import annotations

from . import XenStruct, u8, u16, u32, u64

HVM_FILE_MAGIC = 0x54381286
HVM_FILE_VERSION = 0x00000001

# Type codes (HVM_SAVE_CODE(x)): the records a PVH domain has on Xen.
HVM_SAVE_END = 0
HVM_SAVE_HEADER = 1
HVM_SAVE_CPU = 2
HVM_SAVE_LAPIC = 5
HVM_SAVE_LAPIC_REGS = 6
HVM_SAVE_MTRR = 14
CPU_XSAVE_CODE = 16
HVM_SAVE_TSC_ADJUST = 19
CPU_MSR_CODE = 20
HVM_SAVE_CODE_MAX = 20

HVM_SAVE_NAMES = {0: "END", 1: "HEADER", 2: "CPU", 3: "PIC", 4: "IOAPIC", 5: "LAPIC",
                  6: "LAPIC_REGS", 7: "PCI_IRQ", 8: "ISA_IRQ", 9: "PCI_LINK", 10: "PIT",
                  11: "RTC", 12: "HPET", 13: "PMTIMER", 14: "MTRR", 15: "VIRIDIAN_DOMAIN",
                  16: "CPU_XSAVE", 17: "VIRIDIAN_VCPU", 18: "VMCE_VCPU", 19: "TSC_ADJUST",
                  20: "CPU_MSR"}

XEN_X86_FPU_INITIALISED = 1 << 0
VLAPIC_SW_DISABLED = 0x1
VLAPIC_HW_DISABLED = 0x2
MTRR_VCNT = 8
NUM_FIXED_MSR = 11


class hvm_save_descriptor(XenStruct):
    _xen_c_type_ = "struct hvm_save_descriptor"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("typecode", u16), ("instance", u16), ("length", u32)]


class hvm_save_header(XenStruct):
    _xen_c_type_ = "struct hvm_save_header"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("magic", u32), ("version", u32), ("changeset", u64), ("cpuid", u32),
                ("gtsc_khz", u32)]


_SEGS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr")


class hvm_hw_cpu(XenStruct):
    """One vCPU's registers (HVM_SAVE_TYPE(CPU)). Segment `arbytes` use Xen's compressed
    attribute form (type | s<<4 | dpl<<5 | p<<7 | avl<<8 | l<<9 | db<<10 | g<<11, bit 16
    "unusable" as VMX has it); `pending_event` is the union's 32-bit view (vector,
    type:3, error_valid:1, ..., valid:31)."""
    _xen_c_type_ = "struct hvm_hw_cpu"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = ([("fpu_regs", u8 * 512)]
                + [(n, u64) for n in (
                    "rax", "rbx", "rcx", "rdx", "rbp", "rsi", "rdi", "rsp", "r8", "r9",
                    "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
                    "cr0", "cr2", "cr3", "cr4", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7")]
                + [(f"{s}_sel", u32) for s in _SEGS]
                + [(f"{s}_limit", u32) for s in (*_SEGS, "idtr", "gdtr")]
                + [(f"{s}_base", u64) for s in (*_SEGS, "idtr", "gdtr")]
                + [(f"{s}_arbytes", u32) for s in _SEGS]
                + [(n, u64) for n in (
                    "sysenter_cs", "sysenter_esp", "sysenter_eip", "shadow_gs", "msr_flags",
                    "msr_lstar", "msr_star", "msr_cstar", "msr_syscall_mask", "msr_efer",
                    "msr_tsc_aux", "tsc")]
                + [("pending_event", u32), ("error_code", u32), ("flags", u32),
                   ("pad0", u32)])


class hvm_hw_lapic(XenStruct):
    _xen_c_type_ = "struct hvm_hw_lapic"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("apic_base_msr", u64), ("disabled", u32), ("timer_divisor", u32),
                ("tdt_msr", u64)]


class hvm_hw_lapic_regs(XenStruct):
    _xen_c_type_ = "struct hvm_hw_lapic_regs"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("data", u8 * 1024)]


class hvm_hw_mtrr(XenStruct):
    _xen_c_type_ = "struct hvm_hw_mtrr"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("msr_pat_cr", u64), ("msr_mtrr_var", u64 * (MTRR_VCNT * 2)),
                ("msr_mtrr_fixed", u64 * NUM_FIXED_MSR), ("msr_mtrr_cap", u64),
                ("msr_mtrr_def_type", u64)]


class hvm_hw_cpu_xsave_hdr(XenStruct):
    _xen_c_type_ = "struct hvm_hw_cpu_xsave_hdr"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("xstate_bv", u64), ("xcomp_bv", u64), ("reserved", u64 * 6)]


class hvm_hw_cpu_xsave(XenStruct):
    """CPU_XSAVE (code 16): a variable-length record; the save area (standard, not
    compacted, format) runs on past this fixed part to the size xcr0_accum needs."""
    _xen_c_type_ = "struct hvm_hw_cpu_xsave"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("xfeature_mask", u64), ("xcr0", u64), ("xcr0_accum", u64),
                ("save_area", u8 * (512 + 64))]


class hvm_tsc_adjust(XenStruct):
    _xen_c_type_ = "struct hvm_tsc_adjust"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("tsc_adjust", u64)]


class hvm_one_msr(XenStruct):
    _xen_c_type_ = "struct hvm_one_msr"
    _xen_header_ = "xen/hvm/save.h"
    _fields_ = [("index", u32), ("_rsvd", u32), ("val", u64)]


# CPU_MSR (code 20) is `uint32_t count` then `count` hvm_one_msr at offset 8 (in the
# 64-bit toolstack's layout the helpers write): struct.pack('<I4x') + records.
