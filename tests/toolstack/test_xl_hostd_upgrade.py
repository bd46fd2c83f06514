"""hostd upgraded in place, and hostd killed mid-create.

Upgrade: SIGUSR1 makes hostd exit leaving everything running; `xl` from a newer checkout
(here a copy of src/pyxen with another version string, first on PYTHONPATH) starts the
newer hostd, which adopts the domains, keeps xenstored, and replaces the VMM template
(it would fork the old code) while the domains it forked run on.

Mid-create: PYXEN_TEST_HOLD_CREATE holds a creation at a known point; hostd is killed
there; the next hostd removes the half-built domain completely (the failed `xl create`
said so): no VMM, no domain directory, no xenstore entries.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_template import alive, ppid, template_pid, vmm_pid
from test_xl_domains import cfg, pv_ready
from test_xl_hostd_restart import assert_adopted, assert_console_watch_pause, kill9, two_guests
from xlhost import REPO, Host, needs_vmm, needs_xenstored, processes_of

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(300)]

NEW_VERSION = "9.9.9+upgrade-test"


@dataclass
class Upgraded(Host):
    """The same host, driven by `xl` from another checkout (PYTHONPATH first)."""

    pythonpath: str = ""

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self.pythonpath, env.get("PYTHONPATH", "")) if p)
        return env


def newer_checkout(tmp_path: Path) -> Path:
    """A copy of the package with an observable change: its version string."""
    top = tmp_path / "newer"
    shutil.copytree(REPO / "src" / "pyxen", top / "pyxen",
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = top / "pyxen" / "__init__.py"
    text, n = re.subn(r'^__version__ = ".*"$', f'__version__ = "{NEW_VERSION}"',
                      init.read_text(), flags=re.M)
    assert n == 1
    init.write_text(text)
    return top


def template_ping(host: Host) -> dict:
    """Ask the template itself which code it runs (vmm/template.py: ping)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(host.root / "template" / "socket"))
        s.sendall(b'{"op": "ping"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def environ(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")


def test_upgrade_in_place_keeps_every_domain(host: Host, tmp_path: Path) -> None:
    newer = newer_checkout(tmp_path)
    with two_guests(host, tmp_path) as g:
        da, db = g.da, g.db
        before = host.list()
        old_tpl = template_pid(host)
        assert str(newer) not in template_ping(host)["code"]
        pa, pb = vmm_pid(host, da), vmm_pid(host, db)
        old, xs_pid = host.hostd_pid(), host.xenstored_pid()
        assert old is not None and xs_pid is not None

        # the upgrade's stop: hostd goes, nothing else does (SIGTERM would destroy all)
        os.kill(old, signal.SIGUSR1)
        host.wait_for(lambda: not alive(old), "hostd's exit on SIGUSR1")
        assert not (host.root / "pyxend.sock").exists()
        assert all(alive(p) for p in (pa, pb, old_tpl, xs_pid))
        assert "hostd exiting on SIGUSR1: 2 domain(s)" in (host.root / "hostd.log").read_text()

        up = Upgraded(host.root, host.workdir, pythonpath=str(newer))
        after = up.list()  # this xl (the newer one) starts the newer hostd
        new = up.hostd_pid()
        assert new not in (None, old)
        assert f"PYTHONPATH={newer}" in environ(new)
        log = up.xl("dmesg", check=True).stdout
        assert f"pyxen {NEW_VERSION} (Xen" in log  # the newer code runs hostd
        assert up.xenstored_pid() == xs_pid  # not restarted: guests keep their rings
        assert_adopted(g, before, after, log)

        # the old template (old code, old environment) is replaced, its domains run on
        host.wait_for(lambda: str(newer / "pyxen") in template_ping(host).get("code", ""),
                      "a template of the newer code")
        new_tpl = template_pid(host)
        assert new_tpl != old_tpl and f"PYTHONPATH={newer}" in environ(new_tpl)
        host.wait_for(lambda: not alive(old_tpl), "the old template's exit")
        assert alive(pa) and alive(pb)
        assert f"VMM template (pid {old_tpl}) runs other code" in up.xl("dmesg").stdout

        assert_console_watch_pause(host, up, g)

        # a new domain is forked from the newer template
        up.xl("create", cfg(tmp_path, "c", "idle"), check=True)
        dc = pv_ready(up, "c")
        assert ppid(vmm_pid(host, dc)) == new_tpl

        r = up.xl("shutdown", "-w", "a")
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[-1] == f"Domain {da} has been shut down, reason code 0"
        host.wait_for(lambda: "a" not in up.list(), "on_poweroff=destroy")
        up.xl("destroy", "b", check=True)
        up.xl("destroy", "c", check=True)
        assert g.con.wait(timeout=60) == 0
        for d in (da, db, dc):
            assert host.xenstore("xenstore-read", f"/local/domain/{d}").returncode != 0, d
        up.assert_clean()


@pytest.mark.parametrize("stage", ["spawned", "described"])
def test_kill9_mid_create_leaves_nothing(host: Host, tmp_path: Path, stage: str) -> None:
    env = dict(host.env, PYXEN_TEST_HOLD_CREATE=stage)
    xl = [sys.executable, "-m", "pyxen.cli.xl"]
    subprocess.run([*xl, "list"], env=env, cwd=host.workdir, check=True,
                   capture_output=True, timeout=90)  # hostd, with the hook
    old = host.hostd_pid()
    assert old is not None and "PYXEN_TEST_HOLD_CREATE=" + stage in environ(old)
    cr = subprocess.Popen([*xl, "create", cfg(tmp_path, "a", "idle")], env=env,
                          cwd=host.workdir, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        held = host.wait_for(lambda: list((host.root / "domains").glob("*/held")),
                             "the held creation")
        ddir = held[0].parent
        domid = int(ddir.name)
        # (at "spawned" the forked VMM may not have named itself yet)
        host.wait_for(lambda: [p for p, cmd in processes_of(host.root)
                               if f"pyxen.vmm --domid {domid} " in cmd], "the VMM's name")
        vmm = vmm_pid(host, domid)
        old_tpl = template_pid(host)
        if stage == "described":  # xenstore has the domain, introduced
            host.wait_for(lambda: host.xenstore(
                "xenstore-read", f"/local/domain/{domid}/name").stdout.strip() == "a",
                "the domain's xenstore entries")
        kill9(old)
        _, err = cr.communicate(timeout=60)
        assert cr.returncode != 0, err

        assert list(host.list()) == ["Domain-0"]  # the next hostd removed it
        assert not alive(vmm)
        assert not ddir.exists()
        assert host.xenstore("xenstore-read", f"/local/domain/{domid}").returncode != 0
        assert not [p for p in processes_of(host.root) if "pyxen.vmm --domid" in p[1]]
        log = host.xl("dmesg", check=True).stdout
        if stage == "described":  # (spawned: the VMM may not serve control.sock yet)
            assert f"Domain {domid}: its creation was interrupted" in log, log
        # the template, started with the hook in its environment, is replaced too
        assert f"VMM template (pid {old_tpl}) runs other code" in log, log
        host.wait_for(lambda: not alive(old_tpl), "the old template's exit")
        host.assert_clean()
        # and the name and the domid are free again
        host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
        pv_ready(host, "a")
        host.xl("destroy", "a", check=True)
        host.assert_clean()
    finally:
        if cr.poll() is None:
            cr.kill()
            cr.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)


def test_a_vmm_no_directory_leads_to_is_destroyed(host: Host, tmp_path: Path) -> None:
    """Its hostd gone for good and its directory too (removed by hand, say): the next
    hostd still finds the VMM, by its command line, and destroys it with its entries."""
    host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
    da = pv_ready(host, "a")
    vmm = vmm_pid(host, da)
    old = host.hostd_pid()
    assert old is not None
    kill9(old)
    shutil.rmtree(host.root / "domains" / str(da))
    assert alive(vmm)  # nothing else would ever find it
    assert list(host.list()) == ["Domain-0"]
    host.wait_for(lambda: not alive(vmm), "the orphan VMM's end")
    assert f"Domain {da}: VMM(s) [{vmm}] with no domain directory: destroying" in \
        host.xl("dmesg", check=True).stdout
    assert host.xenstore("xenstore-read", f"/local/domain/{da}").returncode != 0
    host.assert_clean()
