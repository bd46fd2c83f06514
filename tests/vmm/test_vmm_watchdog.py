"""The watchdog that notices HLT and VMCALL inside KVM_RUN (arch/x86/watchdog.py): what it
costs, measured on real guests run in this process (probes counted), and the
KVM_EXIT_XEN path for hosts whose KVM intercepts VMCALL itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxen.arch.x86 import kvm_abi as K
from pyxen.arch.x86.machine import X86Machine, install_kick_handler
from pyxen.arch.x86.paging import EFER_LMA
from pyxen.arch.x86.vmcall import (
    enable_xen_hcall_intercept,
    intercept_config,
    xen_hcall_intercept_supported,
)
from pyxen.hypervisor.domain import Domain
from pyxen.vmm.config import VmmConfig
from pyxen.vmm.events import teardown_event_services
from pyxen.vmm.main import build


@pytest.fixture
def domain(guests: Path) -> Iterator:
    """domain(elf, cmdline) -> (Domain, X86Machine, log lines), built in this process."""
    install_kick_handler()
    made: list[tuple[Domain, X86Machine]] = []

    def _make(elf: str, cmdline: str) -> tuple[Domain, X86Machine, list[dict]]:
        log: list[dict] = []
        cfg = VmmConfig(f"wd{len(made)}", None, "pvh", 32, 32, 1, 1, str(guests / elf), None,
                        cmdline)
        d, m = build(len(made) + 1, cfg, log)
        made.append((d, m))
        return d, m, log

    yield _make
    for d, m in made:
        d.destroy()
        m.join()
        teardown_event_services(d, [])
        if not any(t.is_alive() for t in m.threads):
            for kv in m.vcpus:
                kv.close()
            m.vm.close()


def wait_line(log: list[dict], text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in ev.get("line", "") for ev in log):
        assert time.monotonic() < deadline, [ev.get("line") for ev in log]
        time.sleep(0.01)


@pytest.mark.timeout(60)
def test_busy_guest_is_never_probed(domain) -> None:
    """A vCPU computing in guest user mode for a second, no exits: not one probe (its
    thread's time is guest time, not the kernel time a VMCALL spin burns)."""
    d, m, log = domain("hello.elf", "mode=spin")
    d.unpause()
    wait_line(log, "spinning in ring 3")
    probes = m.watchdog.probes
    time.sleep(1.0)
    assert m.watchdog.probes == probes == 0, m.watchdog.why
    assert d.shutdown_reason is None


@pytest.mark.timeout(60)
def test_busy_guest_starved_of_cpu_is_never_probed(domain) -> None:
    """The same guest on a loaded host, made extreme: its vCPU thread at nice 19 pinned to
    one CPU beside a busy process. Its CPU time hardly moves, as a halted vCPU's would, but
    the thread is runnable (waiting for the CPU), not asleep in KVM: no probe."""
    d, m, log = domain("hello.elf", "mode=spin")
    d.unpause()
    wait_line(log, "spinning in ring 3")
    w = m.watchdog.watches[0]
    assert w.native_id is not None
    cpu = min(os.sched_getaffinity(0))
    burner = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        os.sched_setaffinity(burner.pid, {cpu})
        os.sched_setaffinity(w.native_id, {cpu})
        os.setpriority(os.PRIO_PROCESS, w.native_id, 19)
        probes = m.watchdog.probes
        time.sleep(1.0)
        assert m.watchdog.probes == probes == 0, m.watchdog.why
        assert d.shutdown_reason is None
    finally:
        burner.kill()
        burner.wait()


@pytest.mark.timeout(60)
def test_idle_halted_vcpu_costs_a_probe_or_two(domain) -> None:
    """A vCPU in `sti; hlt` with nothing to wake it: probed once (halted, interrupts on:
    left alone), then only every watchdog.IDLE_REPROBE; it stays online."""
    d, m, log = domain("platform_test.elf", "mode=idle")
    d.unpause()
    wait_line(log, "idle: sti;hlt for ever")
    time.sleep(1.5)
    assert 1 <= m.watchdog.probes <= 3, m.watchdog.probes
    assert d.online_vcpus() == 1 and d.shutdown_reason is None
    assert m.stats["hlt_down"] == 0


def test_xen_hcall_intercept_detection(domain) -> None:
    """KVM_CAP_XEN_HVM reports flags; only INTERCEPT_HCALL makes VMCALL exit to us. This
    host's KVM has no Xen support (PLATFORM.md), so the watchdog path is taken."""
    assert not xen_hcall_intercept_supported(0)
    assert not xen_hcall_intercept_supported(K.KVM_XEN_HVM_CONFIG_HYPERCALL_MSR)
    assert xen_hcall_intercept_supported(K.KVM_XEN_HVM_CONFIG_HYPERCALL_MSR
                                         | K.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)
    cfg = intercept_config()
    assert (cfg.flags, cfg.msr, cfg.blob_addr_32, cfg.blob_size_64) == (
        K.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, 0, 0, 0)
    d, m, _ = domain("platform_test.elf", "mode=idle")
    host_caps = m.kvm.check_extension(K.KVM_CAP_XEN_HVM)
    assert m.xen_hcall_intercept == xen_hcall_intercept_supported(host_caps)
    assert enable_xen_hcall_intercept(m.kvm, m.vm) == m.xen_hcall_intercept


def test_kvm_exit_xen_runs_the_hypercall(domain) -> None:
    """What machine.py does with a KVM_EXIT_XEN (not producible on this host): the exit is
    filled here as KVM fills it for a 64-bit `vmcall` with rax = xen_version, and the
    result must be Xen's; from ring 3 it is -EPERM, as hvm_hypercall."""
    d, m, _ = domain("platform_test.elf", "mode=idle")
    kv, v = m.vcpus[0], d.vcpus[0]
    run = kv.run_struct
    kv.sync_sregs.efer = EFER_LMA | (1 << 8)
    kv.sync_sregs.cs.l = 1
    kv.sync_sregs.ss.dpl = 0
    kv.sync_regs.rax, kv.sync_regs.rdi = 17, 0  # xen_version(XENVER_version)
    run.exit_reason = K.KVM_EXIT_XEN
    x = run.u.xen
    x.type = K.KVM_EXIT_XEN_HCALL
    x.hcall.longmode, x.hcall.cpl, x.hcall.input = 1, 0, 17
    m._exit(v, kv, K.KVM_EXIT_XEN)
    assert x.hcall.result == 0x40011
    x.hcall.cpl = 3
    m._exit(v, kv, K.KVM_EXIT_XEN)
    assert x.hcall.result == (1 << 64) - 1  # -EPERM
    assert m.stats["vmcalls"] == 2 and d.shutdown_reason is None


@pytest.mark.timeout(60)
def test_computing_right_after_vmcalls_costs_a_few_probes(domain) -> None:
    """Right after a burst of VMCALLs (the vCPU is probed 0.5 ms into a busy KVM_RUN), a
    stretch of ring-3 computation: the probes back off (0.5, 1, 2, ... ms), then stop."""
    d, m, log = domain("platform_test.elf", "mode=vmcall n=20 spin=400000000")
    marks: dict[str, int] = {}
    emit = d.emit

    def counting_emit(ev: dict) -> None:
        for what in ("spinning in ring 3", "spun"):
            if ev.get("line", "").endswith(f"vmcall: {what}"):
                marks[what] = m.watchdog.probes
        emit(ev)

    d.emit = counting_emit
    d.unpause()
    wait_line(log, "vmcall: done")
    assert set(marks) == {"spinning in ring 3", "spun"}, marks
    assert m.stats["vmcalls"] >= 20
    # each probe that finds no VMCALL doubles the wait, up to the kernel-time check (50 ms)
    # after which a guest computing in ring 3 is not probed
    assert marks["spun"] - marks["spinning in ring 3"] <= 10, marks
