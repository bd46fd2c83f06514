"""A VMM goes into its cgroups while it builds (toolstack/schedops.domain_spawned): a
created domain's VMM is in its groups, and a VMM that dies during its build leaves no
group behind (docs/sched.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from xlhost import HELLO, Host, needs_vmm, needs_xenstored

from pyxen.toolstack import cgroups

pytestmark = [needs_vmm, needs_xenstored]

CG = Path("/sys/fs/cgroup")
needs_cgv1 = pytest.mark.skipif(not (CG / "cpu" / "cpu.shares").exists(),
                                reason="needs cgroup v1 cpu and cpuset (this host's)")


def cfg(tmp_path: Path, name: str, kernel: Path = HELLO) -> str:
    f = tmp_path / f"{name}.cfg"
    f.write_text(f'name = "{name}"\ntype = "pvh"\nkernel = "{kernel}"\nmemory = 32\n'
                 'cmdline = "mode=idle"\n')
    return str(f)


def groups(host: Host) -> list[Path]:
    base = [CG / ctrl / cgroups.base_name(host.root) for ctrl in ("cpu", "cpuset")]
    return sorted(d for b in base if b.exists() for d in b.iterdir()
                  if d.is_dir() and d.name[:1] == "d" and d.name[1:].isdigit())


@needs_cgv1
def test_created_vmm_is_in_its_groups(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "g1"), check=True)
    domid = host.xl("domid", "g1", check=True).stdout.strip()
    base = cgroups.base_name(host.root)
    pids = [(CG / ctrl / base / f"d{domid}" / "cgroup.procs").read_text().split()
            for ctrl in ("cpu", "cpuset")]
    assert pids[0] == pids[1] and len(pids[0]) == 1, pids
    assert (CG / "cpu" / base / f"d{domid}" / "cpu.shares").read_text().strip() == "1024"
    host.xl("destroy", "g1", check=True)
    assert groups(host) == []


@needs_cgv1
def test_vmm_dying_in_its_build_leaves_no_group(host: Host, tmp_path: Path) -> None:
    junk = tmp_path / "not-an-elf"
    junk.write_bytes(b"junk\n")
    for i in range(4):  # its death races its move into the groups: several tries
        r = host.xl("create", cfg(tmp_path, f"bad{i}", kernel=junk))
        assert r.returncode != 0 and "is not an ELF file" in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    deadline = time.monotonic() + 5  # removed by a worker thread once the move is over
    while groups(host) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert groups(host) == []
    host.assert_clean()
