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
           and not ln.startswith(("loopback: port=", "loopback: bench", "loopback: done",
                                          "loopback: ping loop"))]
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


@pytest.mark.timeout(120)
def test_sends_to_a_backend_are_done_in_the_vcpu_loop(boot, guests: Path) -> None:
    """The guest's EVTCHNOP_send to the loopback backend's port is completed by the C vCPU
    loop (a write to the backend's eventfd, no Python): every one of the 300 PINGs is
    answered, and the VMM counts (at least) that many sends done there."""
    d = boot_test_guest(boot, guests, "mode=loopback n=300 end=idle")
    assert d.request("unpause")["ok"]
    attach_loopback(d)
    d.wait_log(lambda ln: ln.endswith("loopback: idle"))
    assert re.fullmatch(r"loopback: bench n=300 exit_cycles=\d+ rtt_cycles=\d+ tsc_khz=\d+",
                        line(d.guest_lines(), "loopback: bench"))
    assert d.request("destroy")["ok"]
    assert d.proc.wait(20) == 0
    freed = [ln for ln in d.log if "destroyed:" in ln]
    m = re.search(r"; (\d+) send\(s\) to dom0 done in the vCPU loop", freed[0])
    assert m and int(m.group(1)) >= 300, freed


HOSTILE_EXPECTED = {
    "send never opened": -22, "send closed": -22, "close closed": -22, "close port 0": -22,
    "close out of range": -22, "unmask out of range": -22,
    "bind_interdomain dom0 bad port": -22, "bind_interdomain no such domain": -3,
    "bind_interdomain not for us": -22, "alloc_unbound in dom0": -1, "status of dom0": -1,
    "reset dom0": -1, "bind_virq twice": -17, "bind_virq 99": -22,
    "bind_virq global on vcpu 1": -22, "bind_ipi vcpu 9": -2, "bind_vcpu vcpu 9": -2,
    "fifo set_priority on 2-level": -38, "fifo expand_array on 2-level": -95,
    "fifo init_control not ram": -22, "poll out of range": -22, "evtchn bad pointer": -14,
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


# --- the FIFO ABI ---------------------------------------------------------------------------

FIFO_EXPECTED = [
    "fifo: 2-level pending before the switch = 1",
    "fifo: init_control vcpu 9 = -2",                  # -ENOENT
    "fifo: init_control offset beyond page = -22",     # control block would cross the page
    "fifo: init_control offset unaligned = -22",
    "fifo: init_control not ram = -22",
    "fifo: set_priority before init = -38",            # 2-level has no priorities: -ENOSYS
    "fifo: expand_array before init = -95",            # -EOPNOTSUPP
    "fifo: init = 0 link_bits 17",
    "fifo: init_control again = -22",                  # Xen: -EINVAL, not -EEXIST
    "fifo: init_control vcpu 1 not ram = -22",
    "fifo: carried over ok",                           # raised under 2-level, taken from a queue
    "fifo: set_priority 9 = 0",
    "fifo: set_priority 3 = 0",
    "fifo: set_priority 16 = -22",
    "fifo: set_priority bad port = -22",
    # sent p3 (7), p0 (9), p1 (7), p2 (3): priority first, then arrival order
    "fifo: delivery order p2 p3 p1 p0 ",
    "fifo: masked: delivered = 0",
    "fifo: masked: pending = 1",
    "fifo: unmask = 0",
    "fifo: unmasked: delivered = 1",
    "fifo: expand_array not ram = -22",
    "fifo: expand_array to 128 pages = 127",
    "fifo: expand_array page 129 = -28",               # -ENOSPC: 131072 ports
    "fifo: reset = 0",
    "fifo: set_priority after reset = -38",            # back on 2-level
    "fifo: 2-level again: pending = 1",
    "fifo: done",
]


@pytest.mark.timeout(120)
def test_fifo_priorities_carry_over_and_errors(boot, guests: Path) -> None:
    """The FIFO ABI as a guest drives it (guests/evtchn.c: init_control, expand_array, the
    upcall consuming queues by priority): Xen's errors, a port raised under 2-level
    delivered from a queue after the switch, set_priority ordering delivery, masking,
    the 128-page array limit and EVTCHNOP_reset back to 2-level."""
    d = boot_test_guest(boot, guests, "mode=fifo", vcpus=2)
    lines = run_to_shutdown(d)
    assert [ln for ln in lines if ln.startswith("fifo: ")] == FIFO_EXPECTED
    assert not [ln for ln in d.log if "(XEN)" in ln and "crash" in ln]


@pytest.mark.timeout(120)
def test_fifo_loopback_backend_events(boot, guests: Path) -> None:
    """guest <-> dom0 backend with the FIFO ABI: the same requests and grant checks as
    2-level, and every notification from the backend (its hello and one per reply) taken
    from the guest's FIFO queue by its upcall handler."""
    d = boot_test_guest(boot, guests, "mode=loopback n=20 abi=fifo")
    assert d.request("unpause")["ok"]
    attach_loopback(d)
    ev = d.wait_event("shutdown")
    assert ev["reason"] == "poweroff", "\n".join(d.log)
    lines = d.guest_lines()
    assert "evtchn: FIFO ABI, link_bits 17" in lines
    got = [ln for ln in lines if ln.startswith("loopback: ")
           and not ln.startswith(("loopback: port=", "loopback: bench", "loopback: done",
                                  "loopback: fifo", "loopback: ping loop"))]
    assert got == LOOPBACK_EXPECTED
    m = re.fullmatch(r"loopback: fifo events=(\d+) expected=(\d+)", line(lines, "loopback: fifo"))
    assert m, lines
    # hello + 12 requests above + 20 pings, each one event through the queue
    assert int(m.group(1)) == int(m.group(2)) == 1 + len(LOOPBACK_EXPECTED) + 20


@pytest.mark.timeout(120)
def test_fifo_ipi_and_virq_timer(boot, guests: Path) -> None:
    """VIRQ_TIMER (periodic and single-shot) on vCPU 0 and an IPI to vCPU 1 (its own
    control block and upcall vector) with the FIFO ABI: the timer mode of the 2-level
    test, unchanged but for abi=fifo."""
    ticks = 30
    d = boot_test_guest(boot, guests, f"mode=timer period={PERIOD_NS} ticks={ticks} "
                        "via=percpu wait=block abi=fifo", vcpus=2)
    lines = run_to_shutdown(d)
    assert "evtchn: FIFO ABI, link_bits 17" in lines
    m = re.fullmatch(r"timer: ticks=(\d+) upcalls=(\d+) elapsed=(\d+) period=(\d+) "
                     r"via=percpu wait=block", line(lines, "timer: ticks="))
    assert m, lines
    assert int(m.group(1)) == ticks and int(m.group(2)) >= 1
    assert int(m.group(3)) >= ticks * PERIOD_NS
    assert "singleshot: past=-62 other_vcpu=-22 fired=1 on_time=1" in lines
    assert "singleshot stopped: pending=0 ticks=0" in lines
    assert "set_timer_op: rc=0 fired=1 on_time=1" in lines
    assert "ipi: 10 delivered on vcpu 1" in lines
    assert lines[-1] == "timer: done"


# --- the shared info layout: 32- or 64-bit, latched from the vCPU's mode -----------------------


@pytest.mark.timeout(120)
def test_shared_info_layout_latched_from_the_vcpu_mode(boot, guests: Path) -> None:
    """As Xen's hvm_latch_shinfo_size: writing the hypercall page MSR in 32-bit protected
    mode (start.S) latches the x86_32 layout: the wallclock lands in the 32-bit fields and
    port 33 sets selector bit 1 of a 32-bit evtchn_pending_sel (bit 0 in 64-bit words).
    Setting HVM_PARAM_CALLBACK_IRQ from long mode latches the 64-bit layout again."""
    d = boot_test_guest(boot, guests, "mode=latch")
    lines = run_to_shutdown(d)
    assert [ln for ln in lines if ln.startswith("latch: ")] == [
        "latch: 32-bit wallclock version 2 sec_ok 1; 64-bit wallclock version 0",
        "latch: port 33 pending 1 selector bit 1 0 -> 1 upcall 1; 64-bit selector 0",
        "latch: callback from 64-bit mode = 0; 64-bit wallclock version 2 sec_ok 1",
        "latch: port 65 selector bit 1 1 upcall 1",
    ]


@pytest.mark.timeout(120)
def test_32bit_guest_two_level_and_fifo(boot, guests: Path) -> None:
    """guests/evtchn32.c, a -m32 guest in 32-bit protected mode: its hypercall MSR write
    latches the x86_32 layout, so register_vcpu_info marks one 32-bit selector word
    (arch.cr2 beside it untouched) and port 33 is selector bit 1; the FIFO ABI has the
    same structures for it, and carries port 33 over from 2-level onto queue 7 (in port
    order behind what was pending before; the console's notifications come at any time)."""
    d = boot("", kernel=str(guests / "evtchn32.elf"))
    lines = run_to_shutdown(d)
    P, L = 1 << 31, 1 << 29
    assert [ln for ln in lines if ln.startswith("evtchn32: ")] == [
        "evtchn32: register_vcpu_info: rc 0 selector ffffffff cr2 0 upcall 1",
        "evtchn32: 2-level port 33: send 0 selector bit 1 0 -> 1 upcall 1 poll 0",
        "evtchn32: fifo init 0 link_bits 17 expand 0",
        f"evtchn32: fifo carried over: word {P | L:x}, on queue 7 1 (in port order 1), "
        "ready 80",
        f"evtchn32: fifo port 34 priority 2: set 0 send 0 word {P | L:x} head2 34 ready 84 "
        "upcall 1 poll 0",
        "evtchn32: powering off",
    ]
