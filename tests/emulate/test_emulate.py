"""Instructions the host's KVM cannot emulate (arch/x86/emulate.py), with a real guest
(guests/emulate_test.c) that runs each in ring 0 and checks its result, and `xl debug-keys q`
showing what was emulated. On a host whose KVM runs them itself (hardware virtualization)
the guest's results are still checked; only the counts are then absent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from xlhost import Host, needs_vmm, needs_xenstored

pytestmark = [needs_vmm]

# Every check of mode=insns: name -> the alternatives a CPUID check may pick instead.
INSNS = {
    "ud-ldmxcsr-without-osfxsr": (), "ud-undefined-opcode": (), "ldmxcsr-stmxcsr": (),
    "ldmxcsr-reserved-gp": (), "pxor": (), "xorps-mem": (), "addps": (),
    "movq-r64-to-xmm": (), "movq-xmm-to-r64": (), "cmpxchg16b-success": (),
    "cmpxchg16b-failure": (), "popcnt": (), "popcnt-zero": (), "xgetbv": (),
    "rdtscp": ("rdtscp-hidden-ud",), "stac-clac": (), "page-crossing-operand": (),
}
FAULTS = ["ud-ldmxcsr-without-osfxsr", "ud-undefined-opcode",
          "read-through-guest-page-tables", "accessed-bit", "dirty-bit-and-write",
          "pf-write-read-only", "pf-not-present", "pf-crossing-into-hole", "gp-non-canonical"]


def results(lines: list[str]) -> dict[str, str]:
    """name -> PASS/FAIL/SKIP from the guest's "emulate: ..." lines."""
    out = {}
    for ln in lines:
        m = re.search(r"emulate: (PASS|FAIL|SKIP) (\S+)", ln)
        if m:
            out[m.group(2)] = m.group(1)
    return out


def emulated_counts(dump: list[str]) -> tuple[int, int, dict[str, int]] | None:
    """(total, faulted, mnemonic -> count) from the 'q' domain dump, None if absent."""
    for i, ln in enumerate(dump):
        m = re.search(r"Instructions emulated \(host KVM cannot\): (\d+), (\d+) faulted, "
                      r"[\d.]+ us each", ln)
        if m:
            counts = {}
            for row in dump[i + 1:]:
                mm = re.fullmatch(r"(?:\(XEN\) )?      (.+): (\d+)", row)
                if not mm:
                    break
                counts[mm.group(1)] = int(mm.group(2))
            return int(m.group(1)), int(m.group(2)), counts
    return None


@needs_xenstored
@pytest.mark.timeout(240)
def test_instructions_kvm_cannot_emulate_run_correctly_and_q_counts_them(
        host: Host, guests: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "emu.cfg"
    cfg.write_text(f'name = "emu"\ntype = "pvh"\nmemory = 32\n'
                   f'kernel = "{guests / "emulate_test.elf"}"\n'
                   'cmdline = "mode=insns stay=1"\non_poweroff = "destroy"\n')
    host.xl("create", str(cfg), check=True)
    domid = int(host.list()["emu"]["id"])

    def dmesg() -> list[str]:
        return host.xl("dmesg", check=True).stdout.splitlines()

    done = host.wait_for(lambda: next((ln for ln in dmesg() if f"(d{domid}) emulate: done"
                                       in ln), None), "the guest's results", timeout=150)
    log = dmesg()
    got = results(log)
    for name, alternatives in INSNS.items():
        verdicts = [got.get(n) for n in (name, *alternatives)]
        assert "PASS" in verdicts, f"{name}: {verdicts}\n" + "\n".join(log)
    assert "FAIL" not in got.values(), "\n".join(log)
    assert re.search(r"done \d+ passed 0 failed", done), done

    host.xl("debug-keys", "q", check=True)
    log = dmesg()
    q = log[max(i for i, ln in enumerate(log) if "'q' pressed -> dumping domain info" in ln):]
    assert f"(XEN) General information for domain {domid}:" in q
    found = emulated_counts(q)
    if found is None:
        pytest.skip("this host's KVM ran every instruction itself: nothing was emulated")
    total, faulted, counts = found
    # each instruction of the guest that KVM could not run, by its mnemonic
    assert counts["ldmxcsr"] == 6 and counts["stmxcsr"] == 3, counts
    for mnemonic in ("pxor", "xorps", "addps", "popcnt", "xgetbv", "rdtscp", "stac", "clac"):
        assert counts.get(mnemonic, 0) >= 1, (mnemonic, counts)
    assert counts["movq"] == 2 and counts["lock cmpxchg16b"] == 2, counts
    assert counts["(bad)"] == 1, counts  # the undefined opcode, made #UD
    assert total == sum(counts.values())
    # #UD without CR4.OSFXSR, the reserved MXCSR bit's #GP, the undefined opcode's #UD,
    # and rdtscp's #UD where CPUID hides it
    assert faulted == 3 + (got.get("rdtscp-hidden-ud") == "PASS"), (faulted, got)
    host.xl("destroy", "emu", check=True)


@pytest.mark.timeout(120)
def test_faulting_operand_of_an_emulated_instruction_is_a_page_fault_in_the_guest(boot) -> None:
    d = boot(cmdline="mode=faults stay=1", kernel=str(
        Path(__file__).resolve().parents[2] / "guests" / "build" / "emulate_test.elf"))
    d.request("unpause")
    done = d.wait_log(lambda ln: "emulate: done" in ln)
    got = results(d.guest_lines())
    for name in FAULTS:
        assert got.get(name) == "PASS", f"{name}: {got.get(name)}\n" + "\n".join(d.log)
    assert "done 9 passed 0 failed" in done, done
    dump = d.request("debug_key", key="q")["lines"]
    found = emulated_counts(dump)
    if found is None:
        pytest.skip("this host's KVM ran every instruction itself: nothing was emulated")
    total, faulted, counts = found
    # 3 page faults, #GP for the non-canonical address, 2 #UD; the rest completed
    assert faulted == 6 and counts["ldmxcsr"] >= 5 and counts["stmxcsr"] >= 2, dump
    d.request("destroy")
