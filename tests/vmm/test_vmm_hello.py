"""The hello guest boots through `python -m pyxen.vmm` and prints its exact banner."""

from __future__ import annotations

import pytest
from vmm_helpers import read_console_until

COLLATZ_STEPS_1_TO_300000 = 35669725  # computed natively; the guest computes it in ring 3


def banner(domid: int, cmdline: str, vcpus: int, modules: int = 0) -> list[str]:
    lines = [
        "pyxen hello: hypercall from 32-bit protected mode",
        f"pyxen hello: Xen 4.17.0, domain {domid}, {modules} module(s)",
        f'pyxen hello: command line "{cmdline}"',
        f"pyxen hello: ring 3 computed collatz steps 1..300000 = {COLLATZ_STEPS_1_TO_300000}",
        "pyxen hello: shared info ok",
    ]
    lines += [f"pyxen hello: vcpu {i} is up (cpuid vcpu id {i})" for i in range(vcpus)]
    lines += [f"pyxen hello: {vcpus} vcpus up", "pyxen hello: powering off"]
    return lines


@pytest.mark.timeout(60)
@pytest.mark.parametrize("vcpus", [1, 2])
def test_hello_banner(boot, vcpus: int) -> None:
    cmdline = "console=hvc0 greeting=hello"
    d = boot(cmdline, vcpus=vcpus, domid=3 + vcpus)
    assert d.request("info")["state"] == "paused"
    con = d.console()
    assert d.request("unpause") == {"id": 2, "ok": True}
    ev = d.wait_event("shutdown")
    assert ev == {"event": "shutdown", "reason": "poweroff", "code": 0}
    out = read_console_until(con, b"powering off\n").decode()
    # The guest writes each line to console_io and to its PV console ring, as a Xen guest
    # may. As on Xen, console_io goes to the hypervisor log only, as (dN) lines, and the
    # console carries the ring only: every line once in each. The first line comes from
    # 32-bit code before the ring is set up, through console_io alone.
    assert out.splitlines() == banner(d.domid, cmdline, vcpus)[1:]
    assert [ln for ln in d.guest_lines() if "port 0xe9" not in ln] == banner(
        d.domid, cmdline, vcpus)
    info = d.request("info")
    assert info["state"] == "shutdown"
    assert info["shutdown_reason"] == "poweroff"
    assert info["max_vcpus"] == vcpus and info["vcpus"] == 1  # the others went down
    # the shared info page replaced a RAM page, which Xen frees (tot_pages - 1)
    assert info["memory_kib"] == 32 * 1024 - 4
    assert info["cpu_time"] > 0


@pytest.mark.timeout(60)
def test_debug_port_e9_goes_to_the_log(boot) -> None:
    d = boot(domid=9)
    d.request("unpause")
    d.wait_event("shutdown")
    assert "(d9) pyxen hello: domain 9 says hello on port 0xe9" in d.log
    # port 0xe9 output is log-only: it never reaches the console stream
    con = d.console()
    assert b"port 0xe9" not in read_console_until(con, b"powering off\n")


@pytest.mark.timeout(60)
def test_ramdisk_is_a_module(boot, tmp_path) -> None:
    rd = tmp_path / "initrd"
    rd.write_bytes(b"pyxen" * 1000)
    d = boot("", ramdisk=str(rd))
    d.request("unpause")
    d.wait_event("shutdown")
    assert f"(d{d.domid}) pyxen hello: Xen 4.17.0, domain {d.domid}, 1 module(s)" in d.log


@pytest.mark.timeout(60)
def test_console_input_reaches_console_io_read(boot) -> None:
    """A guest that never touches its PV console ring (hvc=0) gets console input through
    CONSOLEIO_read; its console_io output is in the hypervisor log, not on the console."""
    d = boot("mode=echo hvc=0")
    con = d.console()
    d.request("unpause")
    d.wait_log(lambda ln: ln == f"(d{d.domid}) pyxen echo: ready")
    con.sendall(b"abc q")
    assert d.wait_event("shutdown")["reason"] == "poweroff"
    # the guest may read the input in pieces; each piece is echoed on its own line
    pieces = [ln.removeprefix("pyxen echo: ") for ln in d.guest_lines()
              if ln.startswith("pyxen echo: ") and ln != "pyxen echo: ready"]
    assert "".join(pieces) == "abc q"
    assert d.request("destroy")["ok"]
    assert read_console_until(con, b"<eof>") == b""  # nothing on the console stream


@pytest.mark.timeout(60)
def test_console_input_reaches_the_ring_once_used(boot) -> None:
    """A guest using its ring (printk writes it) gets console input there, and its
    echo back on the console stream, each line once."""
    d = boot("mode=echo")
    con = d.console()
    d.request("unpause")
    read_console_until(con, b"pyxen echo: ready\n")
    con.sendall(b"abc q")
    out = read_console_until(con, b"q\n").decode()
    pieces = [ln.removeprefix("pyxen echo: ") for ln in out.splitlines()]
    assert "".join(pieces) == "abc q"
    assert d.wait_event("shutdown")["reason"] == "poweroff"
    logged = [ln.removeprefix("pyxen echo: ") for ln in d.guest_lines()
              if ln.startswith("pyxen echo: ") and ln != "pyxen echo: ready"]
    assert logged == pieces


@pytest.mark.timeout(60)
def test_probe_hypercall_results(boot) -> None:
    uuid = "0123456789abcdef0123456789abcdef"
    d = boot("mode=probe", memory=32, maxmem=64,
             uuid=f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}")
    d.request("unpause")
    assert d.wait_event("shutdown")["reason"] == "poweroff"
    assert [ln for ln in d.guest_lines() if ln.startswith("pyxen probe")] == [
        "pyxen probe: shared info ok",
        # RAM, the special pages (reserved), the ACPI tables (arch/x86/acpi.py), as libxl
        "pyxen probe: memory_map rc 0, 3 entries, first [0, 2000000) type 1",
        "pyxen probe: reservation current 8191 maximum 16384 pages",
        'pyxen probe: capabilities "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"',
        "pyxen probe: features rc 0 submap 30d",
        "pyxen probe: pagesize 4096",
        f"pyxen probe: guest handle {uuid}",
        'pyxen probe: xen commandline "<denied>"',
        # the xenstore ring's port (backends/pvdevices.py: console 1, store 2)
        "pyxen probe: get_param(STORE_EVTCHN) rc 0 value 2",
        "pyxen probe: get_param(IOREQ_PFN) rc -1",
        "pyxen probe: set_param(CALLBACK_IRQ) rc 0, reads back 2000000000000f3",
        "pyxen probe: poll(10 ms) rc 0, woke after the deadline: yes",
        "pyxen probe: watchdog id 1, disarm rc 0",
        "pyxen probe: powering off",
    ]
