"""HLT as Xen's hvm_hlt, seen through `xl`: `cli; hlt` on a secondary vCPU takes it down
(`xl list` counts one vCPU less), on the last one the domain powers off."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from xlhost import REPO, Host, needs_vmm

pytestmark = [needs_vmm, pytest.mark.timeout(240)]

PLATFORM = REPO / "guests" / "build" / "platform_test.elf"


def test_cli_hlt_vcpus_down_then_poweroff(host: Host, tmp_path: Path) -> None:
    f = tmp_path / "hlt.cfg"
    f.write_text(f'name = "hlt"\ntype = "pvh"\nkernel = "{PLATFORM}"\nmemory = 32\n'
                 'vcpus = 2\ncmdline = "mode=hlt"\non_poweroff = "preserve"\n')
    host.xl("create", str(f), check=True)
    assert host.list()["hlt"]["vcpus"] in ("2", "1")
    host.wait_for(lambda: host.list()["hlt"]["vcpus"] == "1", "vCPU 1 down")
    domid = host.list()["hlt"]["id"]
    log = host.root / "console" / "guest-hlt.log"
    host.wait_for(lambda: log.exists() and "waiting for console input" in log.read_text(),
                  "the guest waiting for input")
    assert host.list()["hlt"]["vcpus"] == "1"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(host.root / "domains" / domid / "console.sock"))
        c.sendall(b"x")
        host.wait_for(lambda: host.list()["hlt"]["state"] == "---s--", "poweroff")
    dmesg = host.xl("dmesg", check=True).stdout
    assert f"(XEN) d{domid}v0 All CPUs offline -- powering off." in dmesg
    assert f"Domain {domid} (hlt) shutdown: poweroff" in dmesg
    host.xl("destroy", "hlt", check=True)
    host.assert_clean()
