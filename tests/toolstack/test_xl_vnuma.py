"""vnuma= end to end: the guest (hello.elf mode=vnuma) reads its virtual NUMA topology
through XENMEM_get_vnumainfo and finds the same in the ACPI SRAT/SLIT; each vnode's RAM
is bound to its pnode; bad vnuma= specs are one-line xl errors that create nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from xlhost import HELLO, Host, needs_vmm, needs_xenstored, processes_of

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(240)]

VNUMA = ('vnuma = [ ["pnode=0", "size=8", "vcpus=0", "vdistances=10,21"], '
         '["pnode=0", "size=24", "vcpus=1-2", "vdistances=21,10"] ]')


def _cfg(tmp_path: Path, name: str, *extra: str, mode: str = "vnuma") -> str:
    f = tmp_path / f"{name}.cfg"
    f.write_text("\n".join([f'name = "{name}"', 'type = "pvh"', f'kernel = "{HELLO}"',
                            "memory = 32", "vcpus = 1", f'cmdline = "mode={mode}"', *extra])
                 + "\n")
    return str(f)


def test_guest_reads_its_vnuma_topology(host: Host, tmp_path: Path) -> None:
    r = host.xl("create", "-c", _cfg(tmp_path, "vn", VNUMA))
    assert r.returncode == 0, r.stderr
    out = [ln for ln in r.stdout.splitlines() if ln.startswith("vnuma: ")]
    assert out[-1] == "vnuma: done", out
    want = [
        "vnuma: no room: rc -105, needs 2 vnodes 3 vcpus 2 ranges",
        "vnuma: get_vnumainfo rc 0: 2 vnodes 3 vcpus 2 ranges",
        "vnuma: range 0-800000 vnode 0", "vnuma: range 800000-2000000 vnode 1",
        "vnuma: distance 0->0 10", "vnuma: distance 0->1 21",
        "vnuma: distance 1->0 21", "vnuma: distance 1->1 10",
        "vnuma: vcpu 0 on vnode 0", "vnuma: vcpu 1 on vnode 1", "vnuma: vcpu 2 on vnode 1",
        "vnuma: pad 1 rc -22",
        "vnuma: SRAT found, checksum ok",
        "vnuma: SRAT cpu apic 0 node 0 flags 1", "vnuma: SRAT cpu apic 1 node 1 flags 1",
        "vnuma: SRAT cpu apic 2 node 1 flags 1",
        "vnuma: SRAT memory 0+800000 node 0 flags 1",
        "vnuma: SRAT memory 800000+1800000 node 1 flags 1",
        "vnuma: SLIT found, checksum ok", "vnuma: SLIT 2 localities",
        "vnuma: SLIT 0->0 10", "vnuma: SLIT 0->1 21", "vnuma: SLIT 1->0 21",
        "vnuma: SLIT 1->1 10", "vnuma: done"]
    assert out == want, out
    log = host.xl("dmesg", check=True).stdout
    assert "vn: vNUMA with pnodes: no automatic NUMA placement" in log, log
    assert ("vNUMA: 2 vnodes, guest memory bound 0x0-0x800000:vnode0->node0 "
            "0x800000-0x2000000:vnode1->node0") in log, log
    host.assert_clean()


def test_vnuma_ranges_are_bound_in_numa_maps(host: Host, tmp_path: Path) -> None:
    host.xl("create", _cfg(tmp_path, "vm", VNUMA, mode="idle"), check=True)
    pid = [p for p, cmd in processes_of(host.root) if "pyxen.vmm" in cmd][0]
    ram = [ln for ln in Path(f"/proc/{pid}/numa_maps").read_text().splitlines()
           if "pyxen-d1-ram" in ln]
    assert any(" bind:0 " in ln for ln in ram), ram
    host.xl("destroy", "vm", check=True)
    host.assert_clean()


def test_without_vnuma_the_guest_gets_eopnotsupp_and_no_srat(host: Host,
                                                             tmp_path: Path) -> None:
    r = host.xl("create", "-c", _cfg(tmp_path, "flat"))
    assert r.returncode == 0, r.stderr
    assert "vnuma: no room: rc -95, needs 0 vnodes 0 vcpus 0 ranges" in r.stdout, r.stdout
    assert "SRAT" not in r.stdout and "SLIT" not in r.stdout, r.stdout
    assert "vnuma: done" in r.stdout
    host.assert_clean()


@pytest.mark.parametrize("spec,msg", [
    ('["pnode=0", "size=8", "vcpus=0", "vdistances=10,20"], '
     '["pnode=0", "size=8", "vcpus=1", "vdistances=20,10"]',
     "xl: maxmem and vnuma memory size mismatch"),
    ('["pnode=0", "size=16", "vcpus=0-1", "vdistances=10,20"], '
     '["pnode=0", "size=16", "vcpus=1", "vdistances=20,10"]',
     "xl: vcpu 1 is in more than one vnode"),
    ('["pnode=0", "size=16", "vcpus=0", "vdistances=10"], '
     '["pnode=0", "size=16", "vcpus=1", "vdistances=20,10"]',
     "xl: vnode 0 has 1 vdistances, 2 vnodes need 2"),
    ('["pnode=9", "size=32", "vcpus=0"]', "xl: invalid pnode number: 9"),
    ('["pnode", "size=32", "vcpus=0"]', 'xl: failed to split "pnode" into pair'),
    ('["size=32", "vcpus=0-x"]', "xl: vnode 0: invalid vcpus: 0-x"),
])
def test_bad_vnuma_is_one_line_and_creates_nothing(host: Host, tmp_path: Path, spec: str,
                                                   msg: str) -> None:
    r = host.xl("create", _cfg(tmp_path, "bad", f"vnuma = [ {spec} ]", "maxmem = 32"))
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr
    assert not (host.root / "domains").exists() or not list((host.root / "domains").iterdir())
