"""Domains end to end: real xl processes, hostd, xenstored and the VMM booting the test
guest (guests/build/hello.elf, whose behaviour its command line picks: mode=idle,
reboot, crash, echo, ...). Lists are read with `xl list` from separate processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from xlhost import HELLO, Host, needs_vmm, needs_xenstored, processes_of

pytestmark = [needs_vmm, pytest.mark.timeout(240)]


def cfg(tmp_path: Path, name: str, mode: str, **extra: str) -> str:
    lines = [f'name = "{name}"', 'type = "pvh"', f'kernel = "{HELLO}"', "memory = 32",
             "vcpus = 1", f'cmdline = "mode={mode}"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    f = tmp_path / f"{name}.cfg"
    f.write_text("\n".join(lines) + "\n")
    return str(f)


def state_of(host: Host, name: str) -> str | None:
    d = host.list().get(name)
    return d["state"] if d else None


def test_hello_with_console_shows_banner_and_returns_0(host: Host) -> None:
    r = host.xl("create", "examples/hello.cfg", "-c")
    assert r.returncode == 0, r.stderr
    assert "pyxen hello" in r.stdout
    assert "powering off" in r.stdout
    host.assert_clean()  # on_poweroff = destroy
    dmesg = host.xl("dmesg", check=True).stdout.splitlines()
    assert any(ln.startswith("(d1) ") and "pyxen hello" in ln for ln in dmesg), dmesg
    assert any(ln.startswith("(XEN) ") and "Domain 1 (hello) destroyed" in ln for ln in dmesg)
    # the guest writes each line to its console ring and to console_io (the hypervisor
    # log): shown once on the console and logged once, never twice in either
    shown = [ln for ln in r.stdout.splitlines() if "pyxen hello" in ln]
    logged = [ln for ln in dmesg if ln.startswith("(d1) ")]
    assert len(shown) >= 5 and len(shown) == len(set(shown)), r.stdout
    assert len(logged) == len(set(logged)), dmesg
    assert all(f"(d1) {ln}" in logged for ln in shown)


def test_create_returns_and_list_shows_domain(host: Host, tmp_path: Path) -> None:
    r = host.xl("create", cfg(tmp_path, "idle", "idle"))
    assert r.returncode == 0, r.stderr
    d = host.list()["idle"]
    # 31: the guest put its shared info page over a RAM page, which Xen frees (tot_pages-1)
    assert d["id"] == "1" and d["mem"] == "31" and d["vcpus"] == "1"
    assert d["state"] in ("r-----", "-b----")
    assert list(host.list()) == ["Domain-0", "idle"]
    r = host.xl("list", "-l", "idle", check=True)
    (entry,) = json.loads(r.stdout)
    assert entry["domid"] == 1 and entry["config"]["c_info"]["name"] == "idle"
    # the same name again: Xen's error, and nothing new left behind
    r = host.xl("create", cfg(tmp_path, "idle", "idle"))
    assert r.returncode != 0 and r.stderr.strip() == 'Domain with name "idle" already exists.'
    assert list(host.list()) == ["Domain-0", "idle"]
    host.xl("destroy", "idle", check=True)
    host.assert_clean()


def test_pause_unpause_destroy_lifecycle(host: Host, tmp_path: Path) -> None:
    host.xl("create", "-p", cfg(tmp_path, "life", "idle"), check=True)
    assert state_of(host, "life") == "--p---"
    host.xl("unpause", "life", check=True)
    assert state_of(host, "life") in ("r-----", "-b----")
    host.xl("pause", "1", check=True)
    assert state_of(host, "life") == "--p---"
    host.xl("unpause", "1", check=True)
    host.xl("destroy", "1", check=True)
    host.assert_clean()
    # ids are not reused while... and grow as Xen's do
    host.xl("create", cfg(tmp_path, "life", "idle"), check=True)
    assert host.list()["life"]["id"] == "2"


def test_on_poweroff_preserve_then_destroy(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "off", "poweroff", on_poweroff="preserve"), check=True)
    host.wait_for(lambda: state_of(host, "off") == "---s--", "state ---s--")
    host.xl("destroy", "off", check=True)
    host.assert_clean()


def test_on_crash_preserve_shows_c(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "boom", "crash", on_crash="preserve"), check=True)
    host.wait_for(lambda: state_of(host, "boom") == "---sc-", "state ---sc-")
    host.xl("destroy", "boom", check=True)
    host.assert_clean()


def test_on_crash_destroy_and_triple_fault(host: Host, tmp_path: Path) -> None:
    r = host.xl("create", "-c", cfg(tmp_path, "tf", "triplefault"))
    assert r.returncode == 1  # -c: the domain crashed
    host.assert_clean()


def test_on_reboot_preserve_shows_r(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "rb", "reboot", on_reboot="preserve"), check=True)
    host.wait_for(lambda: state_of(host, "rb") == "---sr-", "state ---sr-")
    host.xl("destroy", "rb", check=True)
    host.assert_clean()


def test_on_reboot_restart_gets_a_new_domid(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "loop", "reboot"), check=True)  # on_reboot=restart
    host.wait_for(lambda: "Domain loop restarted as domain 3"
                  in host.xl("dmesg", check=True).stdout, "two restarts")

    def destroyed() -> bool:
        host.xl("destroy", "loop")  # may fall between two incarnations: then retry
        return "loop" not in host.list()
    host.wait_for(destroyed, "the restart loop to end")
    host.assert_clean()


def pv_ready(host: Host, name: str) -> int:
    """Until the idle guest's PV control is up (it writes control/feature-reboot last);
    returns its domid."""
    domid = int(host.list()[name]["id"])
    host.wait_for(lambda: host.xenstore(
        "xenstore-read", f"/local/domain/{domid}/control/feature-reboot").stdout.strip() == "1",
        f"{name}'s PV control")
    return domid


@needs_xenstored
@pytest.mark.timeout(120)
def test_shutdown_wait_powers_off_a_pv_guest(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "idle", "idle"), check=True)
    domid = pv_ready(host, "idle")
    assert host.xenstore("xenstore-read", f"/local/domain/{domid}/control/"
                         "feature-poweroff").stdout.strip() == "1"
    r = host.xl("shutdown", "-w", "idle")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"Shutting down domain {domid}", "Waiting for 1 domains",
                                     f"Domain {domid} has been shut down, reason code 0"]
    host.wait_for(lambda: "idle" not in host.list(), "on_poweroff=destroy")
    log = host.xl("dmesg", check=True).stdout
    assert f"(d{domid}) pyxen hello: shutdown requested: poweroff" in log
    assert f"Domain {domid} (idle) shut down, reason poweroff code 0: action destroy" in log
    host.assert_clean()


@needs_xenstored
@pytest.mark.timeout(120)
def test_reboot_restarts_a_pv_guest_with_a_new_domid(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "rb", "idle", on_reboot="restart"), check=True)
    pv_ready(host, "rb")
    r = host.xl("reboot", "rb")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "Rebooting domain 1"
    host.wait_for(lambda: host.list().get("rb", {}).get("id") == "2", "domid 2")
    assert "(d1) pyxen hello: shutdown requested: reboot" in host.xl("dmesg", check=True).stdout
    pv_ready(host, "rb")  # the new incarnation is PV-aware too: poweroff it the same way
    host.xl("shutdown", "-w", "rb", check=True)
    host.wait_for(lambda: "rb" not in host.list(), "on_poweroff=destroy")
    host.assert_clean()


@pytest.mark.timeout(120)
def test_shutdown_of_a_guest_without_pv_drivers_times_out(
        host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # libxl treats every PVH guest as PV-aware: the request is written to xenstore and
    # xl fails when the guest never acknowledges it (libxl waits 60 s; this host 2 s).
    monkeypatch.setenv("PYXEN_PVCONTROL_TIMEOUT", "2")
    host.xl("create", cfg(tmp_path, "quiet", "block"), check=True)  # no PV drivers at all
    host.wait_for(lambda: "blocked, no PV drivers" in host.xl("dmesg", check=True).stdout,
                  "the guest to block")
    domid = host.list()["quiet"]["id"]
    for cmd, reason in (("shutdown", "poweroff"), ("reboot", "reboot"),
                        ("shutdown -F", "poweroff")):
        r = host.xl(*cmd.split(), "quiet")
        assert r.returncode != 0
        assert r.stderr.strip().splitlines()[-1].endswith(
            f"guest didn't acknowledge control request ({reason}) within 2 s")
        node = host.xenstore("xenstore-read", f"/local/domain/{domid}/control/shutdown")
        assert node.stdout.strip() == reason
        assert host.list()["quiet"]["state"] in ("r-----", "-b----")  # still running
    host.xl("destroy", "quiet", check=True)
    host.assert_clean()


@needs_xenstored
@pytest.mark.timeout(120)
def test_rename_restart_keeps_a_renamed_copy(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "rn", "idle", on_poweroff="rename-restart"), check=True)
    pv_ready(host, "rn")
    host.xl("shutdown", "rn", check=True)
    doms = host.wait_for(lambda: (lambda d: d if len(d) == 3 else None)(host.list()),
                         "the renamed copy and the new domain")
    old = [n for n in doms if n.startswith("rn-")]
    assert len(old) == 1 and doms[old[0]]["id"] == "1" and doms[old[0]]["state"] == "---s--"
    assert doms["rn"]["id"] == "2"
    host.xl("destroy", old[0], check=True)
    host.xl("destroy", "rn", check=True)
    host.assert_clean()


@needs_xenstored
@pytest.mark.timeout(120)
def test_restart_by_shutdown(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "again", "idle", on_poweroff="restart"), check=True)
    pv_ready(host, "again")
    host.xl("shutdown", "again", check=True)
    host.wait_for(lambda: host.list().get("again", {}).get("id") == "2", "domid 2")
    host.xl("destroy", "again", check=True)
    host.assert_clean()


def test_vmm_killed_is_a_crash(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "victim", "idle", on_crash="preserve"), check=True)
    (vmm,) = [p for p, cmd in processes_of(host.root) if "pyxen.vmm" in cmd]
    os.kill(vmm, signal.SIGKILL)
    host.wait_for(lambda: state_of(host, "victim") == "---sc-", "state ---sc-")
    host.xl("destroy", "victim", check=True)
    host.assert_clean()


def test_console_copies_when_stdin_is_not_a_tty(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "echo", "echo"), check=True)
    host.wait_for(lambda: "pyxen echo: ready" in host.xl("dmesg", check=True).stdout,
                  "the echo guest")
    r = host.xl("console", "echo", input="hello q")
    assert r.returncode == 0, r.stderr
    assert "pyxen echo: hello" in r.stdout
    host.assert_clean()


def test_sigterm_destroys_running_domains(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
    host.xl("create", cfg(tmp_path, "b", "idle"), check=True)
    assert len([c for _, c in processes_of(host.root) if "pyxen.vmm" in c]) == 2
    # the fixture's teardown sends SIGTERM and checks nothing is left


@needs_xenstored
def test_xenstore_entries_while_running_and_gone_after(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "xs", "idle"), check=True)
    uuid = json.loads(host.xl("list", "-l", "xs", check=True).stdout)[0]["config"]["c_info"]["uuid"]
    read = lambda p: host.xenstore("xenstore-read", p)  # noqa: E731
    assert read("/local/domain/1/name").stdout.strip() == "xs"
    assert read("/local/domain/1/domid").stdout.strip() == "1"
    assert read("/local/domain/1/vm").stdout.strip() == f"/vm/{uuid}"
    assert read("/local/domain/1/memory/target").stdout.strip() == "32768"
    assert read("/local/domain/1/memory/static-max").stdout.strip() == "32768"
    assert read("/local/domain/1/cpu/0/availability").stdout.strip() == "online"
    assert read(f"/vm/{uuid}/name").stdout.strip() == "xs"
    assert read(f"/vm/{uuid}/uuid").stdout.strip() == uuid
    ls = host.xenstore("xenstore-ls", "-p", "/local/domain/1")
    assert ls.returncode == 0, ls.stderr
    perms = {ln.split("=")[0].strip(): ln.rsplit("(", 1)[1].rstrip(")")
             for ln in ls.stdout.splitlines() if "(" in ln}
    assert perms["name"] == "n0,r1"
    assert perms["shutdown"] == "n1" and perms["data"] == "n1"
    import subprocess
    watch = subprocess.Popen(["xenstore-watch", "-n", "2", "@releaseDomain"],
                             env=dict(host.env, XENSTORED_PATH=str(host.root / "xenstored"
                                                                   / "socket")),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        host.wait_for(lambda: watch.stdout is not None and
                      "@releaseDomain" in (watch.stdout.readline() or ""), "the watch")
        host.xl("destroy", "xs", check=True)
        out, _ = watch.communicate(timeout=60)  # -n 2: the initial event, then the release
        assert "@releaseDomain" in out
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    for p in ("/local/domain/1", f"/vm/{uuid}", "/libxl/1"):
        assert host.xenstore("xenstore-read", p).returncode != 0, p
    host.assert_clean()


def _read_until(fd: int, needle: bytes, deadline_s: float = 60) -> bytes:
    import select
    import time
    buf = b""
    end = time.monotonic() + deadline_s
    while needle not in buf:
        left = end - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {buf!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_console_on_a_tty_is_interactive_and_ctrl_bracket_detaches(host: Host,
                                                                    tmp_path: Path) -> None:
    import subprocess
    import sys
    import termios

    host.xl("create", cfg(tmp_path, "tty", "echo"), check=True)
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    p = subprocess.Popen([sys.executable, "-m", "pyxen.cli.xl", "console", "tty"],
                         cwd=host.workdir, env=host.env, stdin=slave, stdout=slave,
                         stderr=subprocess.PIPE)
    try:
        _read_until(master, b"pyxen echo: ready")
        os.write(master, b"hi")
        _read_until(master, b"pyxen echo: hi")
        os.write(master, b"\x1d")  # Ctrl-]
        assert p.wait(timeout=60) == 0, p.stderr.read() if p.stderr else ""
        assert termios.tcgetattr(slave) == before  # the terminal is given back as it was
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
        os.close(slave)
    assert host.list()["tty"]["state"] in ("r-----", "-b----")  # detached, still running
    host.xl("destroy", "tty", check=True)
    host.assert_clean()
