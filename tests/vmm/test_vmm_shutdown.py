"""Every way a guest can stop: SCHEDOP_shutdown reasons, triple fault, misbehaviour."""

from __future__ import annotations

import pytest

CODES = {"poweroff": 0, "reboot": 1, "suspend": 2, "crash": 3, "watchdog": 4,
         "soft_reset": 5}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reason", ["poweroff", "reboot", "suspend", "crash", "watchdog"])
def test_shutdown_reason(boot, reason: str) -> None:
    d = boot(f"mode={reason}")
    d.request("unpause")
    ev = d.wait_event("shutdown")
    assert ev == {"event": "shutdown", "reason": reason, "code": CODES[reason]}
    info = d.request("info")
    assert info["state"] == ("crashed" if reason == "crash" else "shutdown")
    assert info["shutdown_reason"] == reason
    assert f"(d{d.domid}) pyxen hello: shutting down ({reason})" in d.log


@pytest.mark.timeout(60)
def test_triple_fault_crashes_with_register_report(boot) -> None:
    d = boot("mode=triplefault")
    d.request("unpause")
    assert d.wait_event("shutdown") == {"event": "shutdown", "reason": "crash", "code": 3}
    log = "\n".join(d.log)
    assert f"(XEN) d{d.domid}v0 triple fault: crashing the domain" in log
    assert "(XEN) RIP:    0008:[<" in log
    assert "(XEN) rax: " in log and "cr3: " in log
    assert "idt: 0000000000000000/0000" in log  # the guest emptied its IDT
    assert d.request("info")["state"] == "crashed"
    assert d.request("destroy")["ok"]
    assert d.proc.wait(10) == 0


@pytest.mark.timeout(60)
def test_misbehaving_guest_gets_errors_and_vmm_survives(boot) -> None:
    d = boot("mode=misbehave")
    d.request("unpause")
    assert d.wait_event("shutdown")["reason"] == "poweroff"
    assert [ln for ln in d.guest_lines() if ln.startswith("pyxen misbehave")] == [
        "pyxen misbehave: xen_version(extraversion, unmapped pointer) = -14",
        "pyxen misbehave: console_io(write, pointer outside RAM) = -14",
        "pyxen misbehave: console_io(write, buffer across the end of RAM) = -14",
        "pyxen misbehave: hypercall 55 = -38",
        "pyxen misbehave: hypercall 127 = -38",
        "pyxen misbehave: sched_op(99) = -38",
        "pyxen misbehave: memory_op(set_memory_map) = 0",
        "pyxen misbehave: vcpu_op(is_up, 5000) = -2",
        "pyxen misbehave: vcpu_op(initialise, unmapped pointer) = -14",
        "pyxen misbehave: still alive, powering off",
    ]
    log = "\n".join(d.log)
    assert f"(XEN) d{d.domid}v0 unimplemented hypercall 55" in log
    assert "unimplemented hypercalls: 55 (?) x1, 127 (?) x1" in log
    assert d.request("info")["state"] == "shutdown"
