"""Event channels, timers and grant tables with a real guest (guests/evtchn_test.c) in a
real VMM (`python -m pyxen.vmm`), and pyxen's loopback backend as dom0's end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PERIOD_NS = 10_000_000
TICKS = 100


def boot_test_guest(boot, guests: Path, cmdline: str, **cfg):
    return boot(cmdline, kernel=str(guests / "evtchn_test.elf"), **cfg)


def run_to_shutdown(d) -> list[str]:
    assert d.request("unpause")["ok"]
    ev = d.wait_event("shutdown")
    lines = d.guest_lines()
    assert ev["reason"] == "poweroff", "\n".join(d.log)
    return lines


def line(lines: list[str], prefix: str) -> str:
    found = [ln for ln in lines if ln.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n" + "\n".join(lines)
    return found[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("via,wait", [("percpu", "block"), ("callback", "hlt")])
def test_periodic_timer_ticks(boot, guests: Path, via: str, wait: str) -> None:
    """100 VIRQ_TIMER upcalls from a 10 ms periodic timer, counted by the guest; its own
    system time says at least 100 periods passed. Then the single-shot timer, and an IPI
    to the second vCPU."""
    d = boot_test_guest(boot, guests, f"mode=timer period={PERIOD_NS} ticks={TICKS} "
                        f"via={via} wait={wait}", vcpus=2)
    lines = run_to_shutdown(d)
    m = re.fullmatch(r"timer: ticks=(\d+) upcalls=(\d+) elapsed=(\d+) period=(\d+) "
                     r"via=(\w+) wait=(\w+)", line(lines, "timer: ticks="))
    assert m, lines
    ticks, upcalls, elapsed, period = (int(m.group(i)) for i in range(1, 5))
    assert (ticks, period) == (TICKS, PERIOD_NS)
    assert upcalls >= 1
    assert elapsed >= TICKS * PERIOD_NS
    assert "timer: tiny period = -22" in lines
    # VCPU_SSHOTTMR_future in the past: -ETIME; another vCPU's single shot: -EINVAL
    assert "singleshot: past=-62 other_vcpu=-22 fired=1 on_time=1" in lines
    assert "singleshot stopped: pending=0 ticks=0" in lines
    assert "set_timer_op: rc=0 fired=1 on_time=1" in lines
    # an IPI channel bound to vCPU 1 arrives there, on the vector vCPU 1 chose
    assert "ipi: 10 delivered on vcpu 1" in lines
    assert lines[-1] == "timer: done"


LOOPBACK_EXPECTED = [
    "loopback: connected, request page flags 19",  # permit_access|reading|writing: mapped
    "loopback: echo status=0 ok",
    "loopback: map out_of_range = -3",     # GNTST_bad_gntref
    "loopback: map foreign = -1",          # granted to d5: GNTST_general_error
    "loopback: map readonly_for_write = -1",
    "loopback: map transitive = -1",       # transitive grants: not supported
    "loopback: map unused = -1",
    "loopback: map bad_frame = -9",        # GNTST_bad_page
    # GTF_reading while mapped read-only (the guest cannot revoke), cleared at unmap
    "loopback: map readonly = 0 flags d end_access -1; unmap = 0 flags 5 end_access 0",
    'loopback: copy = 0 "copy me" flags 5',
    "loopback: copy beyond page = -10",    # GNTST_bad_copy_arg
    "loopback: still served: echo 0",
]


def attach_loopback(d) -> None:
    first = d.wait_log(lambda ln: "loopback: port=" in ln)
    m = re.search(r"port=(\d+) gref=(\d+)", first)
    assert m, first
    reply = d.request("loopback_attach", port=int(m.group(1)), gref=int(m.group(2)))
    assert reply["ok"], reply


@pytest.mark.timeout(120)
def test_granted_page_round_trip_and_backend_checks(boot, guests: Path) -> None:
    d = boot_test_guest(boot, guests, "mode=loopback n=50")
    assert d.request("unpause")["ok"]
    attach_loopback(d)
    ev = d.wait_event("shutdown")
    assert ev["reason"] == "poweroff", "\n".join(d.log)
    lines = d.guest_lines()
    got = [ln for ln in lines if ln.startswith("loopback: ")
           and not ln.startswith(("loopback: port=", "loopback: bench", "loopback: done"))]
    assert got == LOOPBACK_EXPECTED
    assert re.fullmatch(r"loopback: bench n=50 exit_cycles=\d+ rtt_cycles=\d+ tsc_khz=\d+",
                        line(lines, "loopback: bench"))


@pytest.mark.timeout(120)
def test_destroy_frees_channels_and_grants(boot, guests: Path) -> None:
    d = boot_test_guest(boot, guests, "mode=loopback n=1 end=idle")
    assert d.request("unpause")["ok"]
    attach_loopback(d)
    d.wait_log(lambda ln: ln.endswith("loopback: idle"))
    # attaching again: the guest's port is taken now; a bad ref is refused by the grant table
    again = d.request("loopback_attach", port=1000, gref=8)
    assert not again["ok"] and "port 1000" in again["error"], again
    bad = d.request("loopback_attach", port=1, gref=100000)
    assert not bad["ok"] and "invalid grant reference" in bad["error"], bad
    assert d.request("destroy")["ok"]
    assert d.proc.wait(20) == 0
    freed = [ln for ln in d.log if "destroyed:" in ln]
    assert freed, "\n".join(d.log)
    m = re.search(r"closed (\d+) event channel\(s\), revoked (\d+) grant mapping\(s\)", freed[0])
    assert m and int(m.group(1)) >= 1 and int(m.group(2)) == 1, freed


HOSTILE_EXPECTED = {
    "send never opened": -22, "send closed": -22, "close closed": -22, "close port 0": -22,
    "close out of range": -22, "unmask out of range": -22,
    "bind_interdomain dom0 bad port": -22, "bind_interdomain no such domain": -3,
    "bind_interdomain not for us": -22, "alloc_unbound in dom0": -1, "status of dom0": -1,
    "reset dom0": -1, "bind_virq twice": -17, "bind_virq 99": -22,
    "bind_virq global on vcpu 1": -22, "bind_ipi vcpu 9": -2, "bind_vcpu vcpu 9": -2,
    "fifo init_control": -38, "poll out of range": -22, "evtchn bad pointer": -14,
    "ipi pending after send": 1, "loopback bound pending": 1, "loopback delivered": 1,
    "setup_table dom0": -8, "setup_table 65 frames": -1, "set_version 1": 0,
    "map grant frame 64": -22, "grant op bad cmd": -38, "copy ref out of range": -3,
    "copy ref granted to dom0": -1, "copy from dom0 grant": -8,
    "copy into read-only grant": -1, "copy beyond page": -10,
}


@pytest.mark.timeout(120)
def test_hostile_guest_gets_xen_errors(boot, guests: Path) -> None:
    d = boot_test_guest(boot, guests, "mode=hostile")
    lines = run_to_shutdown(d)
    got = {}
    for ln in lines:
        m = re.fullmatch(r"hostile: (.+) = (-?\d+)", ln)
        if m:
            got[m.group(1)] = int(m.group(2))
    assert got == HOSTILE_EXPECTED
    assert "hostile: ipi status = 0 status 5 vcpu 0" in lines
    assert "hostile: setup_table 2 frames = 0 frame0 ok" in lines
    assert "hostile: query_size = 0 nr_frames 2 max 64" in lines
    assert "hostile: set_version 2 = 0 version 2" in lines  # v2 offered (and back to 1)
    assert "hostile: get_version = 0 version 1" in lines
    assert 'hostile: copy own grant = 0 "granted to myself" flags 5' in lines
    assert lines[-1] == "hostile: still alive"
    assert not [ln for ln in d.log if "(XEN)" in ln and "crash" in ln]
