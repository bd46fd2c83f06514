"""hostd dies (kill -9), the domains do not: the next `xl` starts a new hostd, which adopts
every running VMM (toolstack/recovery.py) while xenstored, its own process, kept the
tree, the watches and the guests' rings (toolstack/xenstored.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_xl_domains import _read_until, cfg, pv_ready
from xlhost import Host, needs_vmm, needs_xenstored

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(240)]


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} survived SIGKILL")


def vmm_info(host: Host, domid: int) -> dict:
    """Ask the VMM itself (its control.sock), with no hostd in between."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(host.root / "domains" / str(domid) / "control.sock"))
    try:
        s.sendall(b'{"id": 1, "op": "info"}\n')
        buf = b""
        while True:
            buf += s.recv(65536)
            for line in buf.split(b"\n")[:-1]:
                msg = json.loads(line)
                if msg.get("id") == 1:
                    return msg
    finally:
        s.close()


@dataclass
class TwoGuests:
    """a (idle: PV control) with a xenstore watch on its data/k, and b (echo) with
    `xl console` attached: what a hostd restart or upgrade must not disturb."""
    da: int
    db: int
    con: subprocess.Popen
    watch: subprocess.Popen
    key: str


@contextlib.contextmanager
def two_guests(host: Host, tmp_path: Path) -> Iterator[TwoGuests]:
    host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
    host.xl("create", cfg(tmp_path, "b", "echo"), check=True)
    da = pv_ready(host, "a")
    db = int(host.list()["b"]["id"])
    con = subprocess.Popen([sys.executable, "-m", "pyxen.cli.xl", "console", "b"],
                           cwd=host.workdir, env=host.env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    xsenv = dict(host.env, XENSTORED_PATH=str(host.root / "xenstored" / "socket"))
    key = f"/local/domain/{da}/data/k"
    watch = subprocess.Popen(["xenstore-watch", "-n", "2", key], env=xsenv,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert con.stdout is not None and con.stdin is not None
        _read_until(con.stdout.fileno(), b"pyxen echo: ready")
        host.wait_for(lambda: watch.stdout is not None and key in watch.stdout.readline(),
                      "the watch's first event")
        yield TwoGuests(da, db, con, watch, key)
    finally:
        for p in (con, watch):
            if p.poll() is None:
                p.kill()
                p.wait()


def assert_adopted(g: TwoGuests, before: dict, after: dict, log: str) -> None:
    """Both guests listed as before (ids, memory, vCPUs, running, times not going back)."""
    assert set(after) == {"Domain-0", "a", "b"}
    for name, domid in (("a", g.da), ("b", g.db)):
        assert after[name]["id"] == str(domid)
        assert after[name]["mem"] == before[name]["mem"] and after[name]["vcpus"] == "1"
        assert after[name]["state"] in ("r-----", "-b----"), after[name]
        assert float(after[name]["time"]) >= float(before[name]["time"])
    assert f"Domain {g.da} (a) adopted" in log and f"Domain {g.db} (b) adopted" in log


def assert_console_watch_pause(host: Host, xl: Host, g: TwoGuests) -> None:
    """The console stayed attached, a watch set before fires after, pause/unpause work
    through the new hostd (`xl`: the host as the new hostd's xl sees it)."""
    assert g.con.stdin is not None and g.con.stdout is not None
    g.con.stdin.write(b"hi")
    g.con.stdin.flush()
    _read_until(g.con.stdout.fileno(), b"pyxen echo: hi")
    assert host.xenstore("xenstore-write", g.key, "1").returncode == 0
    out, _ = g.watch.communicate(timeout=60)
    assert g.key in out
    xl.xl("pause", "b", check=True)
    assert xl.list()["b"]["state"] == "--p---"
    xl.xl("unpause", "b", check=True)
    assert xl.list()["b"]["state"] in ("r-----", "-b----")


def test_kill9_hostd_loses_no_domain(host: Host, tmp_path: Path) -> None:
    with two_guests(host, tmp_path) as g:
        before = host.list()
        old, xs_pid = host.hostd_pid(), host.xenstored_pid()
        assert old is not None and xs_pid is not None
        kill9(old)

        after = host.list()  # this xl starts a new hostd, which adopts both VMMs
        assert host.hostd_pid() not in (None, old)
        assert host.xenstored_pid() == xs_pid  # the same xenstored, still serving
        assert_adopted(g, before, after, host.xl("dmesg", check=True).stdout)
        assert_console_watch_pause(host, host, g)
        # PV control: the guest's own xenstore ring survived too
        r = host.xl("shutdown", "-w", "a")
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[-1] == f"Domain {g.da} has been shut down, reason code 0"
        host.wait_for(lambda: "a" not in host.list(), "on_poweroff=destroy")
        host.xl("destroy", "b", check=True)
        assert g.con.wait(timeout=60) == 0  # the console closed: the domain is gone
        for p in (f"/local/domain/{g.da}", f"/local/domain/{g.db}"):
            assert host.xenstore("xenstore-read", p).returncode != 0, p
        host.assert_clean()


def test_new_hostd_finishes_shutdown_wait(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
    da = pv_ready(host, "a")
    old = host.hostd_pid()
    assert old is not None
    sd = subprocess.Popen([sys.executable, "-m", "pyxen.cli.xl", "shutdown", "-w", "a"],
                          cwd=host.workdir, env=host.env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sd.stderr is not None
        lines = [sd.stderr.readline().rstrip("\n") for _ in range(2)]
        assert lines == [f"Shutting down domain {da}", "Waiting for 1 domains"]
        os.kill(old, signal.SIGSTOP)  # frozen: it cannot act on the guest's shutdown
        # the guest shuts down with no hostd to hear it; its VMM keeps it, preserved
        host.wait_for(lambda: vmm_info(host, da).get("state") == "shutdown",
                      "the guest's shutdown, seen by its VMM")
        kill9(old)
        # xl's wait lost its hostd: it starts the next one, which applies on_poweroff
        _, rest = sd.communicate(timeout=120)
        assert sd.returncode == 0, rest
        assert rest.splitlines()[-1] == f"Domain {da} has been shut down, reason code 0"
        log = host.xl("dmesg", check=True).stdout
        assert f"Domain {da} (a) adopted" in log
        assert f"Domain {da} (a) shut down, reason poweroff code 0: action destroy" in log
        host.assert_clean()
    finally:
        if sd.poll() is None:
            sd.kill()
            sd.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)  # never leave it stopped, even when failing
