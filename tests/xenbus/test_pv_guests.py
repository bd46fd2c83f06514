"""PV console and xenbus with real guests (guests/hello.c mode=xenbus, badconsole,
xsflood) on real /dev/kvm, created and driven through `xl`, `xl console` in a pty,
Debian's xenstore-* tools and pyxs as real xenstore clients."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pvguest import XlConsole, create, dmesg, wait_until, xenstored_resources
from xlhost import Host, needs_vmm, needs_xenstored

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(180)]

WATCH = r"pyxen xenbus: watch data/test fired \(test\): "


def test_name_watch_echo_detach_reattach(host: Host, guests: Path) -> None:
    domid = create(host, "pv1", "xenbus", test_value="first")
    con = XlConsole(host, "pv1")
    try:
        # console_io output (before the ring exists) and ring output, in order
        con.expect(r'pyxen hello: command line "mode=xenbus"')
        con.expect(r"pyxen xenbus: console ring up, domain \d+, event channels on")
        con.expect(r"pyxen xenbus: my name is pv1")
        con.expect(r"pyxen xenbus: data/test = first")
        con.expect(WATCH + "first")  # a watch fires once when set
        r = host.xenstore("xenstore-write", f"/local/domain/{domid}/data/test", "second")
        assert r.returncode == 0, r.stderr
        con.expect(WATCH + "second")
        con.type("hello from the host\r")
        con.expect(r"pyxen echo: hello from the host")
        assert con.detach() == 0  # Ctrl-]
    finally:
        con.close()
    # produced while nobody is attached: kept for the next client
    host.xenstore("xenstore-write", f"/local/domain/{domid}/data/test", "while-detached")
    log = host.root / "console" / "guest-pv1.log"
    wait_until(lambda: log.exists() and "while-detached" in log.read_text(),
               "the guest's reaction in its console log")
    con = XlConsole(host, "pv1")
    try:
        con.expect(WATCH + "while-detached")
        con.type("again\r")
        con.expect(r"pyxen echo: again")
        con.type("quit\r")
        con.expect(r"pyxen xenbus: powering off")
        assert con.wait_exit() == 0  # the domain went away (on_poweroff=destroy)
    finally:
        con.close()
    text = log.read_text()
    order = ['pyxen hello: command line "mode=xenbus"', "console ring up",
             "my name is pv1", "fired (test): second", "pyxen echo: hello from the host",
             "fired (test): while-detached", "pyxen echo: again", "powering off"]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions), text
    wait_until(lambda: list(host.list()) == ["Domain-0"], "the domain to be destroyed")


def test_destroy_fires_release_domain_and_frees_channels(host: Host, guests: Path) -> None:
    domid = create(host, "pv2", "xenbus")
    con = XlConsole(host, "pv2")
    try:
        con.expect(r"pyxen xenbus: watching data/test: ok")
    finally:
        con.close()
    fds, maps = xenstored_resources(host, domid)
    assert maps == 1  # xenstored maps the store page (its own memfd) once
    env = dict(host.env, XENSTORED_PATH=str(host.root / "xenstored" / "socket"))
    watcher = subprocess.Popen(["xenstore-watch", "-n", "2", "@releaseDomain"], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == "@releaseDomain\n"  # fires once on WATCH
        host.xl("destroy", "pv2", check=True)
        out, _ = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert out.splitlines() == ["@releaseDomain"]
    assert host.xenstore("xenstore-exists", f"/local/domain/{domid}").returncode != 0
    after_fds, after_maps = xenstored_resources(host, domid)
    assert after_maps == 0
    assert after_fds == fds - 2  # the store channel's kick and notify eventfds
    m = re.search(rf"d{domid}: destroyed: closed (\d+) event channel", dmesg(host))
    assert m and int(m.group(1)) >= 2, dmesg(host)  # at least the console and store ports


def test_release_domain_fires_on_shutdown_and_on_destroy(host: Host, guests: Path) -> None:
    """Xen's xenstored fires @releaseDomain when a domain shuts down (VIRQ_DOM_EXC), not
    only when it is released: a preserved domain's shutdown is seen, then its destroy."""
    cfg = host.root.parent / "keep.cfg"
    cfg.write_text(f'name = "keep"\ntype = "pvh"\nmemory = 32\nkernel = "{guests}/hello.elf"\n'
                   'cmdline = "mode=idle"\non_poweroff = "preserve"\n')
    host.xl("create", str(cfg), check=True)
    domid = int(host.list()["keep"]["id"])
    wait_until(lambda: host.xenstore("xenstore-read", f"/local/domain/{domid}/control/"
                                     "feature-reboot").stdout.strip() == "1",
               "the guest's PV control")
    env = dict(host.env, XENSTORED_PATH=str(host.root / "xenstored" / "socket"))
    watcher = subprocess.Popen(["xenstore-watch", "-n", "3", "@releaseDomain"], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == "@releaseDomain\n"  # fires once on WATCH
        r = host.xl("shutdown", "-w", "keep")
        assert r.returncode == 0, r.stderr
        assert watcher.stdout.readline() == "@releaseDomain\n"  # the shutdown
        assert host.list()["keep"]["state"] == "---s--"  # preserved, not released:
        assert host.xenstore("xenstore-read", f"/local/domain/{domid}/name").stdout.strip() \
            == "keep"
        assert host.xenstore("xenstore-read", f"/local/domain/{domid}/control/shutdown"
                             ).stdout.strip() == ""  # the guest's acknowledgement
        assert f"(d{domid}) pyxen hello: shutdown requested: poweroff" in dmesg(host)
        host.xl("destroy", "keep", check=True)
        out, _ = watcher.communicate(timeout=30)  # and once more for the release
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert out.splitlines() == ["@releaseDomain"]
    assert host.xenstore("xenstore-exists", f"/local/domain/{domid}").returncode != 0
    wait_until(lambda: list(host.list()) == ["Domain-0"], "the domain to be destroyed")


def test_xenbus_guest_answers_shutdown(host: Host, guests: Path) -> None:
    """mode=xenbus is PV-aware too: xl shutdown reaches it through control/shutdown."""
    domid = create(host, "pv5", "xenbus")
    con = XlConsole(host, "pv5")
    try:
        con.expect(r"pyxen xenbus: PV control: ok")
        r = host.xl("shutdown", "-w", "pv5")
        assert r.returncode == 0, r.stderr
        con.expect(r"pyxen xenbus: shutdown requested: poweroff")
        assert con.wait_exit() == 0
    finally:
        con.close()
    assert f"Domain {domid} has been shut down, reason code 0" in r.stderr
    wait_until(lambda: list(host.list()) == ["Domain-0"], "the domain to be destroyed")


def test_corrupt_console_ring_is_reset_others_unaffected(host: Host, guests: Path) -> None:
    bad = create(host, "badcons", "badconsole")
    good = create(host, "goodcons", "xenbus")
    con = XlConsole(host, "badcons")
    try:
        con.expect(r"pyxen badconsole: corrupting the console ring")
        con.expect(r"pyxen badconsole: ring reset by the backend, still alive")
        con.expect(r"pyxen xenbus: my name is badcons")
        con.expect(r"pyxen xenbus: watching data/test: ok")
    finally:
        con.close()
    assert f"(XEN) d{bad}: console ring corrupt: output indices" in dmesg(host)
    con = XlConsole(host, "goodcons")
    try:
        con.expect(r"pyxen xenbus: watching data/test: ok")
        host.xenstore("xenstore-write", f"/local/domain/{good}/data/test", "fine")
        con.expect(WATCH + "fine")
    finally:
        con.close()
    assert host.list()["badcons"]["state"] != "--p---"
    host.xl("destroy", "badcons", check=True)
    host.xl("destroy", "goodcons", check=True)


def test_xenstore_ring_flood_and_bad_indices(host: Host, guests: Path) -> None:
    flood = create(host, "flood", "xsflood")
    good = create(host, "steady", "xenbus")
    con = XlConsole(host, "flood")
    try:
        sent = con.expect(r"pyxen xsflood: \d+ requests sent, request ring full")
        assert int(sent.split()[2]) >= 20
        con.expect(r"pyxen xsflood: xenstored reports ring error 2")  # RINGIDX
        con.expect(r"pyxen xsflood: reconnected \(error 0\)")
        con.expect(r"pyxen xenbus: my name is flood")  # served again after reconnecting
    finally:
        con.close()
    con = XlConsole(host, "steady")
    try:
        con.expect(r"pyxen xenbus: watching data/test: ok")
        host.xenstore("xenstore-write", f"/local/domain/{good}/data/test", "unaffected")
        con.expect(WATCH + "unaffected")
    finally:
        con.close()
    r = host.xenstore("xenstore-read", f"/local/domain/{flood}/name")
    assert r.stdout.strip() == "flood"
    host.xl("destroy", "flood", check=True)
    host.xl("destroy", "steady", check=True)
