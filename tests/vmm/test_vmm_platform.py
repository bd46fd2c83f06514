"""How vCPUs take events, halt and make hypercalls, as Xen does it, with a real guest
(guests/platform.c) in a real VMM on /dev/kvm: the domain-wide callback vector without
the LAPIC, HLT with interrupts off (vCPU down, then poweroff), VMCALL/VMMCALL hypercalls."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from vmm_helpers import Domain


def boot_platform(boot, guests: Path, cmdline: str, **cfg) -> Domain:
    return boot(cmdline, kernel=str(guests / "platform_test.elf"), **cfg)


def run_to_poweroff(d: Domain) -> list[str]:
    assert d.request("unpause")["ok"]
    ev = d.wait_event("shutdown")
    assert ev["reason"] == "poweroff", "\n".join(d.log)
    return d.guest_lines()


def line(lines: list[str], prefix: str) -> str:
    found = [ln for ln in lines if ln.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n" + "\n".join(lines)
    return found[0]


@pytest.mark.timeout(120)
def test_callback_vector_without_lapic_or_eoi(boot, guests: Path) -> None:
    """HVM_PARAM_CALLBACK_IRQ (vector) reaches a guest whose LAPIC is software-disabled and
    which never EOIs: 20 events (half sent with interrupts on, half taken after
    `sti; hlt`), an upcall left pending is injected again each time interrupts come back
    on, and single-shot timers wake the vCPU from `sti; hlt`. GSI and PCI INTx vias set
    afterwards change nothing (a PVH domain has nothing to route them through)."""
    d = boot_platform(boot, guests, "mode=callback n=20 wakes=5")
    lines = run_to_poweroff(d)
    assert "callback: vector 0xe5, LAPIC SVR 0xff" in lines  # bit 8 clear: disabled
    # GSI / PCI INTx / "none" after the vector: stored, but the vector stays (PVH: no
    # IOAPIC or PIC to route them, as Xen's hvm_set_callback_via), as the events below show
    assert "callback: via 5 set=0 get=0 reads 5" in lines
    assert "callback: via 100000000001801 set=0 get=0 reads 100000000001801" in lines
    assert "callback: via 0 set=0 get=0 reads 0" in lines
    assert "callback: ipis=20 (irq on 10, off 10) taken=20" in lines
    # left pending 3 times by the handler: taken 3 more times for the one event
    assert "callback: left pending 3 times, taken 4 times for one event" in lines
    m = re.fullmatch(r"callback: 5 timer wakes from hlt, late avg (\d+) us max (\d+) us",
                     line(lines, "callback: 5 timer wakes"))
    assert m, lines
    assert "callback: LAPIC SVR 0xff at the end, no EOI written" in lines
    assert lines[-1] == "callback: done"
    assert "(XEN) Dom1 callback via changed to Direct Vector 0xe5" in d.log


@pytest.mark.timeout(120)
def test_cli_hlt_takes_vcpus_down_then_powers_off(boot, guests: Path) -> None:
    """`cli; hlt` on vCPU 1 takes it down (the guest sees VCPUOP_is_up 0, the VMM reports
    one vCPU online); VCPUOP_up resumes it after its HLT; `cli; hlt` on the last vCPU
    powers the domain off, as Xen's hvm_hlt / hvm_vcpu_down."""
    d = boot_platform(boot, guests, "mode=hlt", vcpus=2)
    assert d.request("unpause")["ok"]
    d.wait_log(lambda ln: ln.endswith("hlt: waiting for console input"))
    info = d.request("info")
    assert (info["vcpus"], info["max_vcpus"], info["state"]) == (1, 2, "running"), info
    lines = d.guest_lines()
    assert "hlt: vcpu 1 down after cli;hlt (is_up=0)" in lines
    assert "hlt: vcpu 1 brought up resumed after its hlt, down again" in lines
    con = d.console()
    con.sendall(b"x")
    ev = d.wait_event("shutdown")
    con.close()
    assert ev["reason"] == "poweroff", "\n".join(d.log)
    assert "hlt: vcpu 0 cli;hlt" in d.guest_lines()
    assert "hlt: vcpu 0 still running after cli;hlt" not in d.guest_lines()
    assert "(XEN) d1v0 All CPUs offline -- powering off." in d.log
    info = d.request("info")
    assert (info["state"], info["vcpus"], info["shutdown_reason"]) == (
        "shutdown", 0, "poweroff"), info


@pytest.mark.timeout(120)
@pytest.mark.parametrize("insn", ["vmcall", "vmmcall"])
def test_hypercalls_with_vmcall_instruction(boot, guests: Path, insn: str) -> None:
    """Every hypercall of the guest's C code made with VMCALL (or VMMCALL), as current
    Linux does, gets its result; the guest powers off with a VMCALL'd SCHEDOP_shutdown."""
    d = boot_platform(boot, guests, f"mode=vmcall insn={insn} n=10")
    lines = run_to_poweroff(d)
    assert f"vmcall: insn={insn} version=40011" in lines
    assert 'vmcall: extraversion rc=0 ".0"' in lines
    assert "vmcall: get_param store_evtchn rc=0 nonzero=1" in lines
    assert "vmcall: alloc_unbound rc=0 status rc=0 state=1" in lines  # EVTCHNSTAT_unbound
    assert "vmcall: unknown hypercall = -38" in lines
    assert "vmcall: bad pointer = -14" in lines
    # Xen: -EPERM (1) from ring 3. kvm_pvm raises #GP in the guest before any exit.
    ring3 = line(lines, "vmcall: from ring 3 = ")
    assert ring3 in ("vmcall: from ring 3 = -1", "vmcall: from ring 3 = #GP"), ring3
    assert re.fullmatch(r"vmcall: bench n=10 cycles=\d+ tsc_khz=\d+",
                        line(lines, "vmcall: bench"))
    assert lines[-1] == "vmcall: done"
