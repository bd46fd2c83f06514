"""`xl debug-keys` (Xen's keyhandler) through a real hostd and VMM: 'q' dumps every domain
to the hypervisor log and sends VIRQ_DEBUG to its vCPUs, which guests/evtchn_test.c
(mode=debugkey) receives; 'e' lists its event channels; 'h' lists the keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from xlhost import Host, needs_vmm, needs_xenstored

pytestmark = [needs_vmm, needs_xenstored]


def dmesg(host: Host) -> list[str]:
    return host.xl("dmesg", check=True).stdout.splitlines()


def after(lines: list[str], marker: str) -> list[str]:
    """The lines from the last one containing marker on."""
    idx = [i for i, ln in enumerate(lines) if marker in ln]
    assert idx, f"no {marker!r} in:\n" + "\n".join(lines)
    return lines[idx[-1]:]


@pytest.mark.timeout(180)
def test_debug_keys_q_sends_virq_debug_and_e_lists_ports(host: Host, guests: Path,
                                                         tmp_path: Path) -> None:
    cfg = tmp_path / "dbg.cfg"
    cfg.write_text(f'name = "dbg"\ntype = "pvh"\nmemory = 32\n'
                   f'kernel = "{guests / "evtchn_test.elf"}"\ncmdline = "mode=debugkey"\n'
                   'on_poweroff = "destroy"\n')
    host.xl("create", str(cfg), check=True)
    domid = int(host.list()["dbg"]["id"])
    ready = host.wait_for(
        lambda: next((m for ln in dmesg(host) if (m := re.fullmatch(
            rf"\(d{domid}\) evtchn: VIRQ_DEBUG bound to port (\d+) \(VIRQ_CONSOLE (\d+), "
            r"VIRQ_DOM_EXC (\d+)\), waiting", ln))), None),
        "the guest's ready line", timeout=90)
    port, console, dom_exc = (int(ready.group(i)) for i in (1, 2, 3))

    # 'e': the domain's ports, VIRQ ports with their VIRQ; nothing sent yet
    r = host.xl("debug-keys", "e")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    log = after(dmesg(host), "(XEN) 'e' pressed -> dumping event-channel info")
    assert f"(XEN) Event channel information for domain {domid}:" in log
    assert "(XEN)     port [p/m/s]" in log
    assert f"(XEN)     {port:4d} [0/0/0]: s=5 n=0 x=0 v=1" in log, log
    assert f"(XEN)     {console:4d} [0/0/0]: s=5 n=0 x=0 v=2" in log, log
    assert f"(XEN)     {dom_exc:4d} [0/0/0]: s=5 n=0 x=0 v=3" in log, log
    assert "dbg" in host.list()  # 'e' sends nothing: the guest still waits

    # 'q': the dump, then VIRQ_DEBUG on vCPU 0; the guest reports it and powers off
    host.xl("debug-keys", "q", check=True)
    host.wait_for(lambda: "dbg" not in host.list(), "the guest to power off", timeout=90)
    log = dmesg(host)
    assert (f"(d{domid}) evtchn: VIRQ_DEBUG received on vcpu 0 "
            "(0 VIRQ_CONSOLE/VIRQ_DOM_EXC)") in log, log
    q = after(log, "(XEN) 'q' pressed -> dumping domain info (now = ")
    assert f"(XEN) General information for domain {domid}:" in q
    assert "(XEN)     dying=0 pause_count=0" in q
    assert "(XEN)     nr_pages=8191 max_pages=8192" in q  # shared info freed a RAM page
    assert f"(XEN) VCPU information and callbacks for domain {domid}:" in q
    assert any(re.fullmatch(r"\(XEN\)     VCPU0: CPU-?\d+ \[has=[TF]\] poll=0 "
                            r"upcall_pend=0[01] upcall_mask=00", ln) for ln in q), q
    assert "(XEN) No periodic timer" in q
    assert f"(XEN) Notifying guest {domid}:0 (virq 1, port {port})" in q
    # Xen's order: every domain's dump, then the notifications
    assert q.index(f"(XEN) Notifying guest {domid}:0 (virq 1, port {port})") > \
        q.index("(XEN) No periodic timer")


def test_debug_keys_h_lists_keys_and_bad_input_is_a_usage_error(host: Host) -> None:
    host.xl("debug-keys", "hZ", check=True)  # 'Z' has no handler: nothing, as in Xen
    h = after(dmesg(host), "(XEN) 'h' pressed -> showing installed handlers")
    assert h[1:5] == [
        "(XEN)  key '*' (ascii '2a') => print all diagnostics",
        "(XEN)  key 'e' (ascii '65') => dump evtchn info",
        "(XEN)  key 'h' (ascii '68') => show this message",
        "(XEN)  key 'q' (ascii '71') => dump domain (and guest debug) info",
    ], h
    assert not any("'Z'" in ln for ln in h)
    # '*': every diagnostic key, each under its [key: description] heading
    host.xl("debug-keys", "*", check=True)
    star = after(dmesg(host), "(XEN) '*' pressed -> firing all diagnostic keyhandlers")
    assert star[1:3] == ["(XEN) [e: dump evtchn info]",
                         "(XEN) 'e' pressed -> dumping event-channel info"], star
    assert "(XEN) [q: dump domain (and guest debug) info]" in star
    for args in ((), ("",)):
        r = host.xl("debug-keys", *args)
        assert r.returncode == 2  # xl's def_getopt: the line on stderr, the usage on stdout
        assert r.stdout.startswith("Usage: xl [-vtTf] debug-keys <Keys>\n")
        assert r.stderr.splitlines() == ["'xl debug-keys' requires at least 1 argument."]
