"""Pure logic of resource control: xl's cpu-list syntax, the cgroup v1/v2 backends
against a fake cgroupfs tree, cpupools on described topologies, sched keys in xl.cfg."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyxen.toolstack import cgroups, cpulist, sched
from pyxen.toolstack.cpulist import CpuListError, Topology
from pyxen.toolstack.cpupool import CpuPools, PoolError
from pyxen.toolstack.xlcfg import XlCfgError, parse

TOPO4 = Topology(8, {0: {0, 1, 2, 3}, 1: {4, 5, 6, 7}})


def test_cpulist_syntax() -> None:
    assert cpulist.parse("0-3,^2", TOPO4) == {0, 1, 3}
    assert cpulist.parse("all", TOPO4) == set(range(8))
    assert cpulist.parse("nodes:1", TOPO4) == {4, 5, 6, 7}
    assert cpulist.parse("nodes:0-1,^node:0", TOPO4) == {4, 5, 6, 7}
    assert cpulist.parse("all,^5", TOPO4) == {0, 1, 2, 3, 4, 6, 7}
    assert cpulist.fmt({0, 1, 2, 5, 7}) == "0-2,5,7"
    assert cpulist.fmt(set(range(8)), TOPO4) == "all"
    for bad in ("8", "3-1", "x", "nodes:2", "", "^0"):
        with pytest.raises(CpuListError):
            cpulist.parse(bad, TOPO4)


def test_topology_from_fake_sysfs(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "possible").write_text("0-3\n")
    for n, cpus in ((0, "0-1"), (1, "2-3")):
        (tmp_path / "node" / f"node{n}").mkdir(parents=True)
        (tmp_path / "node" / f"node{n}" / "cpulist").write_text(cpus + "\n")
    t = Topology.from_sysfs(tmp_path)
    assert t.ncpus == 4 and t.nodes == {0: {0, 1}, 1: {2, 3}}


def _fake_v1(root: Path) -> None:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.shares").write_text("1024\n")
    (root / "cpuset").mkdir()
    (root / "cpuset" / "cpuset.cpus").write_text("0-7\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")


def test_cgroup_v1_fake_tree(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _fake_v1(root)
    cg = cgroups.detect("/run/a", root)
    assert isinstance(cg, cgroups.CgroupsV1)
    assert cg.base != cgroups.base_name("/run/b")  # parallel hosts never share a group
    cg.setup()
    assert (root / "cpuset" / cg.base / "cpuset.mems").read_text() == "0"
    cg.create(3, 4242, {1, 2})
    cg.set_weight(3, 512)
    cg.set_cap(3, 25)
    d, s = root / "cpu" / cg.base / "d3", root / "cpuset" / cg.base / "d3"
    assert (d / "cpu.shares").read_text() == "2048"
    assert (d / "cpu.cfs_quota_us").read_text() == "25000"
    assert (d / "cpu.cfs_period_us").read_text() == "100000"
    assert (s / "cpuset.cpus").read_text() == "1-2"
    assert (d / "cgroup.procs").read_text() == "4242"
    cg.set_cap(3, 0)
    assert (d / "cpu.cfs_quota_us").read_text() == "-1"
    cg.remove(3)
    assert not d.exists() and not s.exists()
    cg.create(4, 1, {0})
    cg.create(5, 2, {0})
    (root / "cpu" / cg.base / "d5" / "cgroup.procs").write_text("")
    (root / "cpuset" / cg.base / "d5" / "cgroup.procs").write_text("")
    assert cg.prune() == [5]  # a dead hostd's empty group goes, a live one stays
    assert (root / "cpu" / cg.base / "d4").exists()
    cg.teardown()
    assert not (root / "cpu" / cg.base).exists() and not (root / "cpuset" / cg.base).exists()


def test_cgroup_v2_fake_tree(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cg = cgroups.detect("/run/a", root)
    assert isinstance(cg, cgroups.CgroupsV2)
    cg.setup()
    assert "+cpu" in (root / "cgroup.subtree_control").read_text()
    cg.create(7, 99, {0, 1, 2, 3})
    cg.set_weight(7, 256)
    cg.set_cap(7, 150)
    g = root / cg.base / "d7"
    assert (g / "cpu.weight").read_text() == "100"
    assert (g / "cpu.max").read_text() == "150000 100000"
    assert (g / "cpuset.cpus").read_text() == "0-3"
    cg.set_weight(7, 65535)
    assert (g / "cpu.weight").read_text() == "10000"
    cg.set_cap(7, 0)
    assert (g / "cpu.max").read_text() == "max 100000"
    cg.teardown()
    assert not (root / cg.base).exists()


def test_cgroup_none_without_controllers(tmp_path: Path) -> None:
    assert cgroups.detect("/run/a", tmp_path) is None
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    assert cgroups.detect("/run/a", tmp_path) is None


def test_weight_mapping_is_proportional() -> None:
    assert cgroups.shares_for(256) == 1024 and cgroups.shares_for(512) == 2048
    assert cgroups.shares_for(1) == 4 and cgroups.shares_for(65535) == 262140
    assert cgroups.cpu_weight_for(512) == 2 * cgroups.cpu_weight_for(256)


def test_cpupools_on_described_topology() -> None:
    pools = CpuPools(TOPO4)
    p0 = pools.find("Pool-0")
    assert p0.cpus == set(range(8)) and pools.free_cpus() == set()
    with pytest.raises(PoolError, match="isn't free"):
        pools.create("p1", "credit", {4})
    pools.cpu_remove(p0, {4, 5, 6, 7}, ndomains=1)
    p1 = pools.create("p1", "credit2", cpulist.parse("nodes:1", TOPO4))
    assert pools.find(p1.poolid) is p1 and p1.cpus == {4, 5, 6, 7}
    with pytest.raises(PoolError, match="already exists"):
        pools.create("p1")
    with pytest.raises(PoolError, match="Unknown scheduler"):
        pools.create("p2", "rtds")
    with pytest.raises(PoolError, match="unknown cpupool 'nope'"):
        pools.find("nope")
    with pytest.raises(PoolError, match="last cpu"):
        pools.cpu_remove(p1, {4, 5, 6, 7}, ndomains=1)
    with pytest.raises(PoolError, match="still in it"):
        pools.destroy(p1, 1)
    with pytest.raises(PoolError, match="Pool-0"):
        pools.destroy(p0, 0)
    pools.rename(p1, "numa1")
    assert pools.find("numa1") is p1
    pools.destroy(p1, 0)
    assert pools.free_cpus() == {4, 5, 6, 7}
    pools.cpu_add(p0, {4, 5, 6, 7})
    assert p0.cpus == set(range(8))


def test_credit_params_checks_change_nothing_on_error() -> None:
    pools = CpuPools(TOPO4)
    p0 = pools.pools[0]
    for args, msg in (((0, None, None), "Time slice"), ((None, 50, None), "Ratelimit out"),
                      ((1, 5000, None), "greater than timeslice")):
        with pytest.raises(PoolError, match=msg):
            pools.set_params(p0, *args)
        assert (p0.tslice_ms, p0.ratelimit_us) == (30, 1000)
    pools.set_params(p0, 10, 500, 0)
    assert (p0.tslice_ms, p0.ratelimit_us) == (10, 500)


def test_sched_keys_in_xlcfg() -> None:
    cfg = parse('cpu_weight = 512\ncap = 150\ncpus = "0-3,^2"\ncpus_soft = ["1", "2"]\n'
                'pool = "p1"\n')
    assert sched.from_xlconfig(cfg, 2) == {"cpu_weight": 512, "cap": 150, "cpus": "0-3,^2",
                                           "cpus_soft": ["1", "2"], "pool": "p1"}
    with pytest.raises(XlCfgError, match="Cpu weight out of range"):
        sched.from_xlconfig(parse("cpu_weight = 0\n"), 1)
    with pytest.raises(XlCfgError, match="from 0 to 100 "):
        sched.from_xlconfig(parse("cap = 101\n"), 1)
