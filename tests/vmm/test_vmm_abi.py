"""Layouts of the ctypes mirrors (Xen public headers, linux/kvm.h) against the C compiler."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from pyxen.arch.x86 import kvm_abi as K
from pyxen.hypervisor.public import all_structs

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _fields(cls: type) -> list[tuple[str, str]]:
    """(ctypes path, C member designator) of every top-level field."""
    return [(name, name) for name, *_ in cls._fields_]


def _compile_and_run(tmp_path, headers: list[str], checks: list[tuple[str, str]]) -> list[str]:
    src = ["#include <stdint.h>", "#include <stddef.h>", "#include <stdio.h>"]
    src += [f"#include <{h}>" for h in headers]
    src.append("int main(void) {")
    for label, expr in checks:
        src.append(f'    printf("%s %zu\\n", "{label}", (size_t)({expr}));')
    src.append("    return 0; }")
    c = tmp_path / "abi.c"
    c.write_text("\n".join(src) + "\n")
    exe = tmp_path / "abi"
    subprocess.run(["gcc", "-D__XEN_INTERFACE_VERSION__=0x00040d00", "-o", str(exe), str(c)],
                   check=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")


@pytest.mark.timeout(60)
def test_xen_public_structs_match_headers(tmp_path) -> None:
    # x86_64 layouts; the compat twins are checked with -m32 (tests/test_abi_layout.py)
    structs = [s for s in all_structs() if getattr(s, "_xen_abi_", "") != "x86_32"]
    assert len(structs) > 15
    headers = sorted({"xen/xen.h"} | {s._xen_header_ for s in structs})
    checks, expected = [], {}
    for s in structs:
        t = s._xen_c_type_
        label = t.replace(" ", "_")
        checks.append((f"{label}.sizeof", f"sizeof({t})"))
        expected[f"{label}.sizeof"] = ctypes.sizeof(s)
        for name, member in _fields(s):
            key = f"{label}.{name}"
            checks.append((key, f"offsetof({t}, {member})"))
            expected[key] = getattr(s, name).offset
    out = _compile_and_run(tmp_path, headers, checks)
    got = dict(line.split() for line in out if line)
    assert {k: int(v) for k, v in got.items()} == expected


@pytest.mark.timeout(60)
def test_kvm_structs_and_ioctls_match_linux_headers(tmp_path) -> None:
    checks = [
        ("run", "sizeof(struct kvm_run)"),
        ("run.valid", "offsetof(struct kvm_run, kvm_valid_regs)"),
        ("run.s", "offsetof(struct kvm_run, s)"),
        ("run.io", "offsetof(struct kvm_run, io)"),
        ("run.msr.index", "offsetof(struct kvm_run, msr.index)"),
        ("regs", "sizeof(struct kvm_regs)"),
        ("sregs", "sizeof(struct kvm_sregs)"),
        ("KVM_RUN", "KVM_RUN"), ("KVM_GET_REGS", "KVM_GET_REGS"),
        ("KVM_SET_SREGS", "KVM_SET_SREGS"), ("KVM_SET_CPUID2", "KVM_SET_CPUID2"),
        ("KVM_GET_SUPPORTED_CPUID", "KVM_GET_SUPPORTED_CPUID"),
        ("KVM_ENABLE_CAP", "KVM_ENABLE_CAP"), ("KVM_X86_SET_MSR_FILTER", "KVM_X86_SET_MSR_FILTER"),
        ("KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION"),
        ("KVM_SET_MP_STATE", "KVM_SET_MP_STATE"), ("KVM_SET_MSRS", "KVM_SET_MSRS"),
        ("events", "sizeof(struct kvm_vcpu_events)"),
        ("events.interrupt", "offsetof(struct kvm_vcpu_events, interrupt)"),
        ("events.nmi", "offsetof(struct kvm_vcpu_events, nmi)"),
        ("events.flags", "offsetof(struct kvm_vcpu_events, flags)"),
        ("events.payload", "offsetof(struct kvm_vcpu_events, exception_payload)"),
        ("xen_hvm_config", "sizeof(struct kvm_xen_hvm_config)"),
        ("run.xen.result", "offsetof(struct kvm_run, xen.u.hcall.result)"),
        ("run.xen.params", "offsetof(struct kvm_run, xen.u.hcall.params)"),
        ("KVM_GET_MP_STATE", "KVM_GET_MP_STATE"), ("KVM_GET_VCPU_EVENTS", "KVM_GET_VCPU_EVENTS"),
        ("KVM_SET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS"), ("KVM_XEN_HVM_CONFIG", "KVM_XEN_HVM_CONFIG"),
        ("KVM_EXIT_XEN", "KVM_EXIT_XEN"), ("KVM_MP_STATE_HALTED", "KVM_MP_STATE_HALTED"),
        ("KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL", "KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL"),
        ("events.error_code", "offsetof(struct kvm_vcpu_events, exception.error_code)"),
        ("xsave", "sizeof(struct kvm_xsave)"), ("xcrs", "sizeof(struct kvm_xcrs)"),
        ("run.internal.data", "offsetof(struct kvm_run, internal.data)"),
    ]
    emulate_ioctls = ("KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_GET_XSAVE",
                      "KVM_SET_XSAVE", "KVM_GET_XCRS", "KVM_GET_CPUID2")
    checks += [(name, name) for name in emulate_ioctls]
    got = dict(line.split() for line in _compile_and_run(tmp_path, ["linux/kvm.h"], checks) if line)
    expected = {
        "run": ctypes.sizeof(K.kvm_run), "run.valid": K.kvm_run.kvm_valid_regs.offset,
        "run.s": K.kvm_run.s.offset, "run.io": K.kvm_run.u.offset,
        "run.msr.index": K.kvm_run.u.offset + K.kvm_run_msr.index.offset,
        "regs": ctypes.sizeof(K.kvm_regs), "sregs": ctypes.sizeof(K.kvm_sregs),
        "events": ctypes.sizeof(K.kvm_vcpu_events),
        "events.interrupt": K.kvm_vcpu_events.interrupt.offset,
        "events.nmi": K.kvm_vcpu_events.nmi.offset,
        "events.flags": K.kvm_vcpu_events.flags.offset,
        "events.payload": K.kvm_vcpu_events.exception_payload.offset,
        "xen_hvm_config": ctypes.sizeof(K.kvm_xen_hvm_config),
        "run.xen.result": K.kvm_run.u.offset + K.kvm_xen_exit.hcall.offset
        + K.kvm_xen_exit_hcall.result.offset,
        "run.xen.params": K.kvm_run.u.offset + K.kvm_xen_exit.hcall.offset
        + K.kvm_xen_exit_hcall.params.offset,
        "events.error_code": K.kvm_vcpu_events_exception.error_code.offset,
        "xsave": ctypes.sizeof(K.kvm_xsave), "xcrs": ctypes.sizeof(K.kvm_xcrs),
        "run.internal.data": K.kvm_run.u.offset + K.kvm_run_internal.data.offset,
    }
    expected.update({name: getattr(K, name) for name in emulate_ioctls})
    for name in ("KVM_RUN", "KVM_GET_REGS", "KVM_SET_SREGS", "KVM_SET_CPUID2",
                 "KVM_GET_SUPPORTED_CPUID", "KVM_ENABLE_CAP", "KVM_X86_SET_MSR_FILTER",
                 "KVM_SET_USER_MEMORY_REGION", "KVM_SET_MP_STATE", "KVM_SET_MSRS",
                 "KVM_GET_MP_STATE", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS",
                 "KVM_XEN_HVM_CONFIG", "KVM_EXIT_XEN", "KVM_MP_STATE_HALTED",
                 "KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL"):
        expected[name] = getattr(K, name)
    assert {k: int(v) for k, v in got.items()} == expected
