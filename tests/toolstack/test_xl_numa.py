"""NUMA end to end: `xl info -n` (Xen's cpu_topology / numa_info sections), automatic
placement of a new domain and its RAM bound to the chosen node (the VMM's
/proc/PID/numa_maps), on this host and on a described 2-node host (PYXEN_SYSFS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_numa import TWO, fake_sysfs
from xlhost import HELLO, Host, needs_vmm, needs_xenstored, processes_of

from pyxen.toolstack.config import DomainConfig

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(240)]


def _cfg(tmp_path: Path, name: str, *extra: str) -> str:
    f = tmp_path / f"{name}.cfg"
    f.write_text("\n".join([f'name = "{name}"', 'type = "pvh"', f'kernel = "{HELLO}"',
                            "memory = 32", "vcpus = 1", 'cmdline = "mode=idle"', *extra])
                 + "\n")
    return str(f)


def _vmm_pid(host: Host) -> int:
    pids = [pid for pid, cmd in processes_of(host.root) if "pyxen.vmm" in cmd]
    assert len(pids) == 1, pids
    return pids[0]


def test_xl_info_numa_on_this_host(host: Host) -> None:
    out = host.xl("info", "-n", check=True).stdout.splitlines()
    i = out.index("cpu_topology           :")
    assert out[i - 1].startswith("free_cpus")
    assert out[i + 1] == "cpu:    core    socket     node"
    ncpu = os.cpu_count()
    assert [ln.split(":")[0].strip() for ln in out[i + 2:i + 2 + ncpu]] == \
        [str(c) for c in range(ncpu)]
    j = out.index("numa_info              :")
    assert out[j + 1] == "node:    memsize    memfree    distances"
    node0 = out[j + 2].split()
    assert node0[0] == "0:" and node0[3] == "10"
    total = int(Path("/sys/devices/system/node/node0/meminfo").read_text().split()[3]) >> 10
    assert int(node0[1]) == total
    assert out[j + 3].startswith("xen_major")
    # without -n: no topology
    assert "numa_info              :" not in host.xl("info", check=True).stdout


def test_new_domain_ram_is_bound_to_its_node(host: Host, tmp_path: Path) -> None:
    host.xl("create", _cfg(tmp_path, "placed"), check=True)
    log = host.xl("dmesg", check=True).stdout
    assert "placed: NUMA placement candidate with 1 node(s) (0)" in log, log
    maps = Path(f"/proc/{_vmm_pid(host)}/numa_maps").read_text().splitlines()
    ram = [ln for ln in maps if "pyxen-d1-ram" in ln]
    assert ram and all(" bind:0 " in ln for ln in ram), ram
    host.xl("destroy", "placed", check=True)
    host.assert_clean()


@pytest.mark.skipif("cpus" not in DomainConfig.__dataclass_fields__,
                    reason="cpus= is the scheduler part's key (branch sched)")
def test_explicit_cpus_means_no_placement(host: Host, tmp_path: Path) -> None:
    host.xl("create", _cfg(tmp_path, "pinned", 'cpus = "0"'), check=True)
    log = host.xl("dmesg", check=True).stdout
    assert "pinned: explicit CPU affinity: no automatic NUMA placement" in log, log
    maps = Path(f"/proc/{_vmm_pid(host)}/numa_maps").read_text().splitlines()
    assert not any("bind:" in ln for ln in maps if "pyxen-d1-ram" in ln)
    host.xl("destroy", "pinned", check=True)
    host.assert_clean()


def test_placement_on_a_described_two_node_host(host: Host, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs = fake_sysfs(tmp_path, [("0", 8192, 2000), ("1", 8192, 6000)], TWO)
    monkeypatch.setenv("PYXEN_SYSFS", str(sysfs))  # hostd starts with the first xl call
    out = host.xl("info", "-n", check=True).stdout
    assert "   0:      8192       2000      10,21\n   1:      8192       6000      21,10" in out
    host.xl("create", _cfg(tmp_path, "a"), check=True)
    log = host.xl("dmesg", check=True).stdout
    assert "a: NUMA placement candidate with 1 node(s) (1), 1 CPUs and 6000 MiB free" in log
    # node 1 now runs a's vCPU: the next domain goes to node 0
    host.xl("create", _cfg(tmp_path, "b"), check=True)
    log = host.xl("dmesg", check=True).stdout
    assert "b: NUMA placement candidate with 1 node(s) (0)" in log, log
    for name in ("a", "b"):
        host.xl("destroy", name, check=True)
    host.assert_clean()
