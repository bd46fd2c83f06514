"""Xen's compat (x86_32) hypercall ABI from a real 32-bit PVH guest (guests/compat32.c:
-m32, 32-bit protected mode, paging off) on real /dev/kvm.

The guest prints one line per check, "compat32: <what>: <results>"; each test compares
them with what Xen 4.17 answers a 32-bit HVM/PVH guest. Structs that are smaller in the
x86_32 ABI are followed by a canary word in the guest, which a 64-bit layout would read or
overwrite.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.timeout(60)


def run_compat32(boot, guests) -> tuple[dict[str, str], object]:
    d = boot("", kernel=str(guests / "compat32.elf"))
    d.request("unpause")
    assert d.wait_event("shutdown") == {"event": "shutdown", "reason": "poweroff", "code": 0}
    results: dict[str, str] = {}
    for line in d.guest_lines():
        what, _, rest = line.removeprefix("compat32: ").partition(": ")
        assert what not in results, f"{what!r} reported twice"
        results[what] = rest
    return results, d


def test_runs_in_32_bit_protected_mode_and_powers_off(boot, guests) -> None:
    r, _ = run_compat32(boot, guests)
    assert r["mode"] == "32-bit protected yes, paging off"
    assert "powering off" in r


def test_xen_version(boot, guests) -> None:
    r, _ = run_compat32(boot, guests)
    assert r["xen_version"] == "4.17.0"
    assert r["capabilities"] == '"hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"'
    # compat_platform_parameters (4 bytes): Xen 4.17 answers a 32-bit HVM caller with its
    # domain's hv_compat_vstart, ~0u; the word after the struct is left alone
    assert r["platform_parameters"] == "rc 0 virt_start ffffffff canary intact"
    assert r["features"] == "rc 0 submap 30d"
    assert r["pagesize"] == "4096"


def test_pv_only_hypercall_is_enosys_and_counted(boot, guests) -> None:
    r, d = run_compat32(boot, guests)
    assert r["event_channel_op_compat"] == "-38"  # '-' in Xen's hvm32 column
    assert f"(XEN) d{d.domid}v0 PV-only hypercall 16 (event_channel_op_compat): -ENOSYS (x1)" \
        in d.log


def test_vcpu_timers_and_sched_poll(boot, guests) -> None:
    """compat sched_poll (ports handle, timeout at offset 8), compat
    vcpu_set_singleshot_timer (12 bytes) and set_timer_op(lo, hi) in two registers."""
    r, _ = run_compat32(boot, guests)
    assert r["register_vcpu_info"] == "rc 0, system time advances: yes"
    assert r["bind_virq(TIMER)"] == "rc 0"
    assert r["singleshot"] == ("past -62, rc 0, poll rc 0, woken by the timer: yes, "
                               "canary intact")
    assert r["set_timer_op"] == "rc 0, poll rc 0, woken by the timer: yes"
    # the high register is part of the deadline: 2^32 ns later does not fire in 100 ms
    assert r["set_timer_op(hi 1)"] == ("rc 0, poll rc 0, fired within 100 ms: no, "
                                       "stop rc 0")


def test_event_channels(boot, guests) -> None:
    r, _ = run_compat32(boot, guests)
    assert r["alloc_unbound"] == "rc 0 port allocated"
    assert r["bind_ipi"] == "rc 0, send rc 0, poll rc 0, at once: yes"


def test_grant_table_query_size(boot, guests) -> None:
    r, _ = run_compat32(boot, guests)
    assert r["gnttab query_size"] == "rc 0 status 0 frames 1 max ok"


def test_grant_table_setup_table(boot, guests) -> None:
    """compat gnttab_setup_table: a 32-bit frame_list handle of 32-bit frames."""
    r, _ = run_compat32(boot, guests)
    assert r["gnttab setup_table"] == "rc 0 status 0 frame written, canaries intact intact"


def test_memory_map(boot, guests) -> None:
    """compat xen_memory_map: nr_entries and a 32-bit buffer handle (8 bytes)."""
    r, _ = run_compat32(boot, guests)
    m = re.fullmatch(r"rc 0, (\d+) entries, first \[0, 2000000\) type 1, canary intact",
                     r["memory_map"])
    assert m and int(m.group(1)) >= 1, r["memory_map"]  # RAM first (32 MiB), then others


def test_shared_info_in_the_32_bit_layout(boot, guests) -> None:
    """compat xen_add_to_physmap; then shared_info as a 32-bit guest reads it: wc_sec at
    its x86_32 offset, evtchn_mask words of 32 bits (a masked port is pending without
    telling the vCPU), evtchn_pending_sel at offset 4 of vcpu_info."""
    r, _ = run_compat32(boot, guests)
    assert r["add_to_physmap(shared_info)"] == "rc 0, canary intact"
    assert r["wallclock"] == "plausible yes"
    assert r["masked send"] == ("rc 0 pending 1 sel 0 upcall 0; unmask rc 0: "
                                "mask 0 sel 1 upcall 1")
