"""xl migrate between two pyxen hosts on this machine, with a guest that dirties memory
from ring 3 and checks it (guests/dirty.c): live pre-copy, the handshake, and the failure
paths (the target dies, the link drops), after which the source domain runs on, intact,
and the target has nothing left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from mighost import MigHost
from xlhost import HELLO, needs_vmm, processes_of

pytestmark = [needs_vmm, pytest.mark.timeout(300)]

LINE = re.compile(r"\(d(\d+)\) dirty: n=(\d+) bad=(\d+) pages=(\d+)")


def create_dirty(h: MigHost, tmp_path, name: str = "mig", memory: int = 64,
                 rate: int = 20000, mib: int = 32) -> int:
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\ntype = "pvh"\nkernel = "{HELLO}"\nmemory = {memory}\n'
                   f'vcpus = 1\ncmdline = "mode=dirty mib={mib} rate={rate} report=100 hvc=0"\n')
    h.xl("create", str(cfg), check=True)
    return int(h.list()[name]["id"])


def reports(h: MigHost, domid: int | None = None) -> list[tuple[int, int, int]]:
    """(n, bad, pages) of every dirty: line in the host's hypervisor log (of domid)."""
    out = []
    for line in h.dmesg():
        m = LINE.search(line)
        if m and (domid is None or int(m.group(1)) == domid):
            out.append((int(m.group(2)), int(m.group(3)), int(m.group(4))))
    return out


def wait_reports(h: MigHost, domid: int, count: int, after: int = -1):
    return h.wait_for(lambda: [r for r in reports(h, domid) if r[0] > after][count - 1:]
                      and reports(h, domid), f"{count} reports of d{domid} after n={after}",
                      timeout=90)


def migrate_to(source: MigHost, target: MigHost, domain: str, *opts: str):
    """xl migrate with `-s env` and HOST `PYXEN_RUNDIR=<target's>`, so xl's transport
    `exec SSHCOMMAND HOST xl migrate-receive` runs the target host's xl on this machine."""
    return source.xl("migrate", *opts, "-s", "env", domain, f"PYXEN_RUNDIR={target.root}",
                     timeout=240)


def test_live_migration_while_dirtying(hosts, tmp_path) -> None:
    a, b = hosts
    domid = create_dirty(a, tmp_path)
    before = wait_reports(a, domid, 3)
    assert before[-1][1] == 0, before
    r = migrate_to(a, b, "mig", "--debug")
    print(r.stderr)
    assert r.returncode == 0, r.stderr
    err = r.stderr
    for msg in ("migration target: Ready to receive domain.",
                "migration target: Transfer complete, requesting permission to start domain.",
                "migration sender: Target has acknowledged transfer.",
                "migration sender: Giving target permission to start.",
                "migration target: Got permission, starting domain.",
                "migration target: Domain started successsfully.",
                "migration sender: Target reports successful startup.",
                "Migration successful."):
        assert msg in err, err
    assert "xc: progress: Frames iteration 0" in err
    # The source is gone; the target runs it, same name, new domid on that host.
    assert "mig" not in a.list() and "mig--migratedaway" not in a.list()
    lb = b.list()
    assert "mig" in lb and "mig--incoming" not in lb, lb
    new = int(lb["mig"]["id"])
    last_before = max(n for n, _, _ in reports(a, domid))
    after = wait_reports(b, new, 2, after=last_before)
    # The counter went on from where it was, and every page is what the guest wrote.
    assert all(bad == 0 for _, bad, _ in after), after
    assert after[-1][0] > last_before
    a.assert_clean()
    assert (b.root / "console" / "guest-mig.log").exists()
    b.xl("destroy", "mig", check=True)
    b.assert_clean()


def test_live_migration_pv_guest_suspends(hosts, tmp_path) -> None:
    """A guest with PV control (guests/savetest.c mode=pv, dirtying its pattern pages) is
    asked to suspend for the last round, as libxl does; on the target its suspend returns
    0 (a new domain), it reconnects, its counter goes on and its pattern checksum is the
    same."""
    from test_saverestore import report, write_cfg

    a, b = hosts
    cfg = write_cfg(tmp_path, "st", "mode=pv dirty=1")
    a.xl("create", str(cfg), check=True)
    domid = int(a.list()["st"]["id"])
    before = report(a, domid, "1")
    r = migrate_to(a, b, "st", "--debug")
    assert r.returncode == 0, r.stderr
    assert f"Domain {domid} (st): suspend requested" in "\n".join(a.dmesg())
    new = int(b.list()["st"]["id"])
    after = report(b, new, "2")
    assert after["sum"] == before["sum"]
    assert after["counter"] > before["counter"]  # type: ignore[operator]
    assert after["dom"] == new and after["resumed"] == 1 and after["cancelled"] == 0
    a.assert_clean()
    b.xl("destroy", "st", check=True)


def test_pv_guest_resumes_cancelled_when_the_link_drops(hosts, tmp_path) -> None:
    """The PV guest suspended for the last round, then the link dropped before the
    handshake: its suspend is cancelled (SCHEDOP_shutdown returns 1) and it carries on in
    place with the same memory."""
    from test_saverestore import report, write_cfg

    a, b = hosts
    a.xl("create", str(write_cfg(tmp_path, "st", "mode=pv dirty=1")), check=True)
    domid = int(a.list()["st"]["id"])
    before = report(a, domid, "1")
    relay = tmp_path / "drop.sh"
    relay.write_text(f"#!/bin/sh\nenv PYXEN_RUNDIR={b.root} xl migrate-receive | head -c 54\n")
    relay.chmod(0o755)
    r = a.xl("migrate", "-s", "", "st", str(relay), timeout=240)
    assert r.returncode != 0 and "Migration failed, resuming at sender." in r.stderr, r.stderr
    assert a.list()["st"]["id"] == str(domid)
    after = report(a, domid, "2")
    assert after["sum"] == before["sum"] and after["cancelled"] == 1, after
    assert after["counter"] > before["counter"]  # type: ignore[operator]
    b.wait_for(lambda: list(b.list()) == ["Domain-0"],
               f"target cleaned up (it lists {list(b.list())})")
    b.assert_clean()
    a.xl("destroy", "st", check=True)


def test_target_dies_mid_stream(hosts, tmp_path) -> None:
    """The target's receiver and its VMM are killed while pages flow: the source resumes,
    same domain, same name, memory intact; the target has no domain, no directories, no
    xenstore entries."""
    a, b = hosts
    domid = create_dirty(a, tmp_path, memory=256, mib=200, rate=200000)
    wait_reports(a, domid, 2)
    b.xl("list", check=True)  # the target's hostd runs before the migration starts
    mig = subprocess.Popen([*a.xl_argv(), "migrate", "-s", "env", "mig",
                            f"PYXEN_RUNDIR={b.root}"], env=a.env, cwd=a.workdir,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victims = b.wait_for(lambda: [p for p, cmd in processes_of(b.root)
                                      if "pyxen.vmm" in cmd or "migrate-receive" in cmd][1:]
                             and [p for p, cmd in processes_of(b.root)
                                  if "pyxen.vmm" in cmd or "migrate-receive" in cmd],
                             "the target's receiver and VMM")
        time.sleep(0.3)  # pages are flowing
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        _, err = mig.communicate(timeout=120)
    finally:
        if mig.poll() is None:
            mig.kill()
            mig.wait()
    assert mig.returncode != 0, err
    assert "migration sender: libxl_domain_suspend failed" in err, err
    assert "Migration failed, resuming at sender." in err, err
    la = a.list()
    assert "mig" in la and int(la["mig"]["id"]) == domid, la
    last = max(n for n, _, _ in reports(a, domid))
    after = wait_reports(a, domid, 2, after=last)
    assert all(bad == 0 for _, bad, _ in after), after
    b.wait_for(lambda: list(b.list()) == ["Domain-0"],
               f"target cleaned up (it lists {list(b.list())})")
    b.assert_clean()
    assert not list((b.root / "console").glob("guest-mig*")), "console log left behind"
    assert b.xenstore("xenstore-ls", "/local/domain").stdout.strip() in ("", "0 = \"\""), \
        b.xenstore("xenstore-ls", "/local/domain").stdout
    a.xl("destroy", "mig", check=True)


def test_link_drops_mid_stream(hosts, tmp_path) -> None:
    """The link carries 3 MB of the image and then drops: the source's write fails and it
    resumes; the target's VMM sees the image end early and hostd removes the domain."""
    a, b = hosts
    domid = create_dirty(a, tmp_path)
    wait_reports(a, domid, 2)
    link = tmp_path / "cut.sh"
    link.write_text("#!/bin/sh\n"
                    f"head -c 3000000 | env PYXEN_RUNDIR={b.root} xl migrate-receive\n")
    link.chmod(0o755)
    r = a.xl("migrate", "-s", "", "mig", str(link), timeout=240)
    assert r.returncode != 0, r.stderr
    assert "migration sender: libxl_domain_suspend failed" in r.stderr, r.stderr
    assert "migration target: Domain creation failed" in r.stderr, r.stderr
    assert "Migration failed, resuming at sender." in r.stderr, r.stderr
    la = a.list()
    assert "mig" in la and int(la["mig"]["id"]) == domid, la
    last = max(n for n, _, _ in reports(a, domid))
    after = wait_reports(a, domid, 2, after=last)
    assert all(bad == 0 for _, bad, _ in after), after
    b.wait_for(lambda: list(b.list()) == ["Domain-0"],
               f"target cleaned up (it lists {list(b.list())})")
    b.assert_clean()
    assert not list((b.root / "console").glob("guest-mig*")), "console log left behind"
    a.xl("destroy", "mig", check=True)


def test_foreign_stream_on_receive(hosts) -> None:
    """Something that is not a migration stream: one error line, nothing created."""
    _, b = hosts
    r = b.xl("migrate-receive", input="this is not a Xen save image, just text" * 10)
    assert r.returncode != 0
    assert "migration target: Domain creation failed" in r.stderr, r.stderr
    assert "wrong magic number" in r.stderr, r.stderr
    assert r.stdout.startswith("xl migration receiver ready, send binary domain data.\n")
    b.assert_clean()


def test_link_drops_before_handshake(hosts, tmp_path) -> None:
    """The transport ends right after the stream (the link drops before the target says it
    is ready): the source resumes; the target's half-made copy is destroyed."""
    a, b = hosts
    domid = create_dirty(a, tmp_path)
    wait_reports(a, domid, 2)
    # A transport that closes the reverse channel once the banner has passed: the
    # receiver's "ready" never arrives.
    relay = tmp_path / "drop.sh"
    relay.write_text("#!/bin/sh\n"
                     f"env PYXEN_RUNDIR={b.root} xl migrate-receive | head -c 54\n")
    relay.chmod(0o755)
    r = a.xl("migrate", "-s", "", "mig", str(relay), timeout=240)
    print(r.stderr)
    assert r.returncode != 0, r.stderr
    assert "Migration failed, resuming at sender." in r.stderr, r.stderr
    la = a.list()
    assert "mig" in la and int(la["mig"]["id"]) == domid, la
    last = max(n for n, _, _ in reports(a, domid))
    after = wait_reports(a, domid, 2, after=last)
    assert all(bad == 0 for _, bad, _ in after), after
    b.wait_for(lambda: list(b.list()) == ["Domain-0"],
               f"target cleaned up (it lists {list(b.list())})")
    b.assert_clean()
    assert not list((b.root / "console").glob("guest-mig*")), "console log left behind"
    a.xl("destroy", "mig", check=True)


def test_tcp_mode(hosts, tmp_path) -> None:
    a, b = hosts
    create_dirty(a, tmp_path)
    b.xl("list", check=True)
    port = 20000 + os.getpid() % 20000
    recv = subprocess.Popen([*b.xl_argv(), "migrate-receive", "--listen", f"127.0.0.1:{port}"],
                            env=b.env, cwd=b.workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        r = a.xl("migrate", "mig", f"tcp://127.0.0.1:{port}", timeout=240)
        out, err = recv.communicate(timeout=60)
    finally:
        if recv.poll() is None:
            recv.send_signal(signal.SIGKILL)
            recv.wait()
    assert r.returncode == 0, r.stderr + err
    assert recv.returncode == 0, err
    assert "mig" in b.list() and "mig" not in a.list()
    b.xl("destroy", "mig", check=True)


def test_config_override(hosts, tmp_path) -> None:
    """-C CONFIG: the target gets that configuration (here on_crash), the name stays."""
    import json

    a, b = hosts
    create_dirty(a, tmp_path)
    other = tmp_path / "other.cfg"
    other.write_text((tmp_path / "mig.cfg").read_text().replace('name = "mig"',
                                                                'name = "ignored"')
                     + 'on_crash = "preserve"\n')
    r = a.xl("migrate", "-C", str(other), "-s", "env", "mig", f"PYXEN_RUNDIR={b.root}",
             timeout=240)
    assert r.returncode == 0, r.stderr
    listed = json.loads(b.xl("list", "-l", "mig", check=True).stdout)
    assert listed[0]["config"]["on_crash"] == "preserve", listed
    assert listed[0]["config"]["c_info"]["name"] == "mig"
    b.xl("destroy", "mig", check=True)


def test_bad_arguments(hosts) -> None:
    a, _ = hosts
    r = a.xl("migrate", "nosuch", "somewhere")
    assert r.returncode != 0 and "nosuch" in r.stderr
    r = a.xl("migrate-receive", "--listen", "notaport")
    assert r.returncode != 0 and "--listen" in r.stderr
