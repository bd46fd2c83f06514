"""A save in flight does not hold up hostd or the saved domain's VMM: the image is written
on a connection of its own to the VMM's control.sock (toolstack/saverestore.py
`_save_via_vmm`, as `migrate_send` has), in a VMM executor thread (vmm/saveops.py),
so hostd's usual connection to that VMM and every other domain keep answering.

PYXEN_TEST_HOLD_SAVE=FILE (vmm/saveops.py, tests only) holds the save, the domain paused
and the image's descriptor taken, until the test removes FILE: the test asks its
questions while the save is certainly in flight, then lets it finish and restores the
image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_saverestore import create, report, write_cfg
from xlhost import HELLO, REPO, Host, have_vmm

pytestmark = [pytest.mark.skipif(not have_vmm(), reason="needs /dev/kvm and the test guests"),
              pytest.mark.timeout(300)]


def test_requests_answer_while_a_save_is_in_flight(host: Host, tmp_path: Path) -> None:
    hold = tmp_path / "save-held"
    env = dict(host.env, PYXEN_TEST_HOLD_SAVE=str(hold))
    xl = [sys.executable, "-m", "pyxen.cli.xl"]
    subprocess.run([*xl, "list"], env=env, cwd=REPO, check=True, capture_output=True,
                   timeout=90)  # hostd (and so its VMMs) with the hook
    domid = create(host, write_cfg(tmp_path))
    before = report(host, domid, "1")
    other = tmp_path / "other.cfg"
    other.write_text(f'name = "other"\ntype = "pvh"\nkernel = "{HELLO}"\nmemory = 32\n'
                     'vcpus = 1\ncmdline = "mode=idle"\n')
    host.xl("create", str(other), check=True)
    img = tmp_path / "st.img"
    save = subprocess.Popen([*xl, "save", "st", str(img)], env=env, cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        host.wait_for(hold.exists, "the save to reach its hold")
        assert save.poll() is None
        # hostd answers, about every domain, the one being saved included
        rows = host.list()
        assert set(rows) == {"Domain-0", "st", "other"}, rows
        assert host.xl("list", "st", check=True).stdout.splitlines()[1].split()[0] == "st"
        # the saved domain's VMM answers on hostd's usual connection (vcpu_info: a VMM
        # that did not answer would leave the domain out of the list)
        vl = host.xl("vcpu-list", "st", check=True).stdout.splitlines()
        assert len(vl) == 2 and vl[1].split()[:3] == ["st", str(domid), "0"], vl
        # other domains' requests are served too
        host.xl("pause", "other", check=True)
        assert host.list()["other"]["state"] == "--p---"
        host.xl("unpause", "other", check=True)
        assert host.list()["other"]["state"] != "--p---"
        assert save.poll() is None and not img.stat().st_size  # still held, nothing written
    finally:
        hold.unlink(missing_ok=True)
        out, err = save.communicate(timeout=120)
    assert save.returncode == 0, err
    assert "st" not in host.list()
    host.xl("restore", str(img), check=True)
    after = report(host, int(host.list()["st"]["id"]), "2")
    assert after["sum"] == before["sum"] and after["resumed"] == 1
    assert after["counter"] > before["counter"]  # type: ignore[operator]
    host.xl("destroy", "st", check=True)
    host.xl("destroy", "other", check=True)
    host.assert_clean()
