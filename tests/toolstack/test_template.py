"""Domains come from the VMM template (a fork server: vmm/template.py,
toolstack/template.py), and keep every guarantee of one process per domain: a guest that
crashes, or a VMM that dies, takes down only its own domain; the template and the other
domains keep running and new domains can be made; a dead template is restarted; no
domain's VMM holds anything of the template's or of another domain's."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_xl_domains import cfg, pv_ready
from test_xl_hostd_restart import kill9, vmm_info
from xlhost import Host, needs_vmm, needs_xenstored, processes_of

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(240)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def vmm_pid(host: Host, domid: int) -> int:
    """The VMM serving domain `domid`: its command line names its domid."""
    pids = [p for p, cmd in processes_of(host.root)
            if "pyxen.vmm --domid" in cmd and f"--domid {domid} " in cmd]
    assert len(pids) == 1, (domid, processes_of(host.root))
    return pids[0]


def fds(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return out


def template_pid(host: Host) -> int:
    return host.wait_for(host.template_pid, "the VMM template")


def test_domains_are_forked_from_the_template_and_share_nothing(host: Host,
                                                                tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
    host.xl("create", cfg(tmp_path, "b", "idle"), check=True)
    da, db = pv_ready(host, "a"), pv_ready(host, "b")
    tpl = template_pid(host)
    pa, pb = vmm_pid(host, da), vmm_pid(host, db)
    # forked by the template (its children), each its own session, as `python -m pyxen.vmm`
    assert ppid(pa) == tpl and ppid(pb) == tpl
    assert os.getsid(pa) == pa and os.getsid(pb) == pb
    assert "pyxen.vmm" not in Path(f"/proc/{tpl}/cmdline").read_text()
    # nothing inherited: not the template's socket, not another domain's memory or files
    tpl_fds = set(fds(tpl).values())
    for me, other, pid in ((da, db, pa), (db, da, pb)):
        mine = fds(pid)
        assert mine[0] == "/dev/null"
        assert mine[2].endswith(f"/domains/{me}/vmm.log")
        sockets = {t for t in tpl_fds if t.startswith("socket:")}
        assert not sockets & set(mine.values()), (mine, tpl_fds)
        memfds = [t for t in mine.values() if t.startswith("/memfd:")]
        assert memfds and all(t.startswith(f"/memfd:pyxen-d{me}-") for t in memfds), mine
        assert not any(f"pyxen-d{other}-" in t or f"/domains/{other}/" in t
                       for t in mine.values()), mine
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert f"pyxen-d{me}-ram" in maps and f"pyxen-d{other}-" not in maps
    # the template runs no domain: no KVM, no guest memory, only its listening socket
    assert not any("kvm" in t or "memfd" in t for t in tpl_fds), tpl_fds
    assert vmm_info(host, da)["state"] in ("running", "blocked")


def test_a_crashing_guest_and_a_killed_vmm_harm_only_their_own_domain(
        host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "keep", "idle"), check=True)
    host.xl("create", cfg(tmp_path, "victim", "idle", on_crash="preserve"), check=True)
    keep, victim = pv_ready(host, "keep"), pv_ready(host, "victim")
    tpl = template_pid(host)
    pkeep = vmm_pid(host, keep)
    # a guest that crashes (SCHEDOP_shutdown crash), and one that triple-faults
    host.xl("create", cfg(tmp_path, "boom", "crash", on_crash="preserve"), check=True)
    host.wait_for(lambda: host.list().get("boom", {}).get("state") == "---sc-",
                  "boom crashed")
    host.xl("create", cfg(tmp_path, "tf", "triplefault", on_crash="destroy"), check=True)
    host.wait_for(lambda: "tf" not in host.list(), "the triple-faulted domain destroyed")
    # a VMM that dies under its guest (what a guest corrupting its VMM comes to)
    kill9(vmm_pid(host, victim))
    host.wait_for(lambda: host.list().get("victim", {}).get("state") == "---sc-",
                  "the killed VMM's domain crashed")
    # the template and the other domain are untouched
    assert alive(tpl) and host.template_pid() == tpl
    assert alive(pkeep) and vmm_pid(host, keep) == pkeep
    assert vmm_info(host, keep)["state"] in ("running", "blocked")
    assert host.list()["keep"]["state"] in ("-b----", "r-----")
    # and domains are still made, from the same template
    host.xl("create", cfg(tmp_path, "after", "idle"), check=True)
    after = pv_ready(host, "after")
    assert ppid(vmm_pid(host, after)) == tpl
    for name in ("boom", "victim", "after", "keep"):
        host.xl("destroy", name, check=True)
    host.assert_clean()


def test_a_killed_template_is_restarted_and_domains_live_on(host: Host,
                                                           tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
    da = pv_ready(host, "a")
    pa = vmm_pid(host, da)
    old = template_pid(host)
    kill9(old)
    # creation does not wait for it (a fresh interpreter meanwhile, or the new template)
    host.xl("create", cfg(tmp_path, "b", "idle"), check=True)
    db = pv_ready(host, "b")
    new = host.wait_for(lambda: (p := host.template_pid()) != old and p and alive(p) and p,
                        "a new template")
    host.wait_for(lambda: f"VMM template started: pid {new}" in host.xl("dmesg").stdout,
                  "the new template ready")
    assert alive(pa) and vmm_info(host, da)["state"] in ("running", "blocked")
    assert vmm_info(host, db)["state"] in ("running", "blocked")
    host.xl("create", cfg(tmp_path, "c", "idle"), check=True)
    dc = pv_ready(host, "c")
    assert ppid(vmm_pid(host, dc)) == new
    log = host.xl("dmesg", check=True).stdout
    assert f"VMM template (pid {old}) died" in log
    for name in ("a", "b", "c"):
        host.xl("destroy", name, check=True)
    host.assert_clean()


def test_a_new_hostd_adopts_the_template(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
    da = pv_ready(host, "a")
    tpl = template_pid(host)
    hostd = host.hostd_pid()
    assert hostd is not None
    kill9(hostd)
    assert host.list()["a"]["id"] == str(da)  # the next xl starts a hostd, which adopts
    host.wait_for(lambda: "VMM template adopted" in host.xl("dmesg").stdout,
                  "the template adopted")
    assert host.template_pid() == tpl and alive(tpl)
    host.xl("create", cfg(tmp_path, "b", "idle"), check=True)
    assert ppid(vmm_pid(host, pv_ready(host, "b"))) == tpl
    # at teardown (Host.stop) the new hostd stops the template it adopted


def test_without_the_template_domains_start_a_fresh_interpreter(
        host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYXEN_TEMPLATE", "0")
    host.xl("create", cfg(tmp_path, "a", "idle"), check=True)
    da = pv_ready(host, "a")
    time.sleep(0.5)
    assert host.template_pid() is None
    assert ppid(vmm_pid(host, da)) == host.hostd_pid()
    host.xl("destroy", "a", check=True)
    host.assert_clean()
