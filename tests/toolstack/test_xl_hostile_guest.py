"""A hostile guest under `xl`: hello.elf's mode=fuzz (guests/fuzz.c) issues a few thousand
pseudo-random hypercalls (random numbers, sub-ops, pointers into its own memory filled with
random bytes, across the end of RAM, outside it) and must still power off normally, with
no Python traceback or internal error in the hypervisor log, while another domain on the
same host (an idle guest) stays listed and answers `xl pause` / `xl unpause`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from xlhost import HELLO, REPO, Host, needs_vmm, needs_xenstored

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(180)]

SEEDS = (1, 2, 3)
CALLS = 1200


def cfg(tmp_path: Path, name: str, cmdline: str) -> str:
    f = tmp_path / f"{name}.cfg"
    f.write_text(f'name = "{name}"\ntype = "pvh"\nkernel = "{HELLO}"\nmemory = 32\n'
                 f'vcpus = 1\ncmdline = "{cmdline}"\non_poweroff = "destroy"\n'
                 'on_crash = "preserve"\n')
    return str(f)


def dmesg(host: Host) -> list[str]:
    return host.xl("dmesg", check=True).stdout.splitlines()


def test_fuzzing_guest_powers_off_and_neighbour_keeps_running(host: Host,
                                                               tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(REPO / "guests")], check=True)
    host.xl("create", cfg(tmp_path, "idle", "mode=idle"), check=True)
    host.wait_for(lambda: host.list()["idle"]["state"] == "-b----", "the idle guest")
    for seed in SEEDS:
        name = f"fuzz{seed}"
        host.xl("create", cfg(tmp_path, name, f"mode=fuzz seed={seed} n={CALLS}"), check=True)
        domid = int(host.list()[name]["id"])
        host.wait_for(lambda n=name: "c" in host.list().get(n, {"state": "c"})["state"],
                      f"{name} to power off (or crash: preserved)", 120)
        log = dmesg(host)
        summary = [ln for ln in log if ln.startswith(f"(d{domid}) pyxen fuzz: done")]
        assert len(summary) == 1, log[-40:]
        m = re.fullmatch(rf"\(d{domid}\) pyxen fuzz: done {CALLS}: ok (\d+)(.*), other 0",
                         summary[0])
        assert m, summary  # every result was >= 0 or a Xen errno (-1..-127)
        assert f"(XEN) Domain {domid} ({name}) shutdown: poweroff" in log, log[-40:]
        assert f"(d{domid}) pyxen fuzz: powering off" in log
        print(summary[0])
    pyxen = [ln for ln in dmesg(host) if not re.match(r"\(d\d+\) ", ln)]  # not the guests'
    for bad in ("Traceback", "internal error", "crashing the domain", "Error"):
        assert not [ln for ln in pyxen if bad in ln], [ln for ln in pyxen if bad in ln]
    # the neighbour is untouched and still under control
    assert host.list()["idle"]["state"] in ("-b----", "r-----")
    host.xl("pause", "idle", check=True)
    assert host.list()["idle"]["state"] == "--p---"
    host.xl("unpause", "idle", check=True)
    host.wait_for(lambda: host.list()["idle"]["state"] in ("-b----", "r-----"), "unpause")
