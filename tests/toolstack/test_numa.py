"""NUMA topology from a described sysfs tree and libxl's automatic placement on it
(pure logic: this host has one node, so 2- and 4-node hosts are fake trees)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyxen.toolstack.numa import NumaError, info_sections, parse_cpulist, place, read_topology


def fake_sysfs(root: Path, nodes: list[tuple[str, int, int]], dist: list[list[int]]) -> Path:
    """nodes: (cpulist, MemTotal MiB, MemFree MiB) for node 0, 1, ..."""
    sysfs = root / "sys"
    for i, (cpus, total, free) in enumerate(nodes):
        d = sysfs / "devices/system/node" / f"node{i}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {i} MemTotal:       {total * 1024} kB\n"
                                   f"Node {i} MemFree:        {free * 1024} kB\n"
                                   f"Node {i} MemUsed:        {(total - free) * 1024} kB\n")
        (d / "distance").write_text(" ".join(map(str, dist[i])) + "\n")
        for c in parse_cpulist(cpus):
            t = sysfs / f"devices/system/cpu/cpu{c}/topology"
            t.mkdir(parents=True)
            (t / "core_id").write_text(f"{c % 4}\n")
            (t / "physical_package_id").write_text(f"{i}\n")
    (sysfs / "devices/system/node/possible").write_text(f"0-{len(nodes) - 1}\n")
    return sysfs


TWO = [[10, 21], [21, 10]]
FOUR = [[10, 16, 16, 22], [16, 10, 22, 16], [16, 22, 10, 16], [22, 16, 16, 10]]


def test_topology_of_a_two_node_host(tmp_path: Path) -> None:
    topo = read_topology(fake_sysfs(tmp_path, [("0-3", 8192, 6000), ("4-7", 8192, 7000)],
                                    TWO))
    assert [n.cpus for n in topo.nodes] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert topo.nodes[1].mem_free_kib == 7000 * 1024
    assert [(c.id, c.core, c.socket, c.node) for c in topo.cpus][4] == (4, 0, 1, 1)
    lines = info_sections(topo)
    assert lines[:3] == ["cpu_topology           :", "cpu:    core    socket     node",
                         "  0:       0        0        0"]
    i = lines.index("numa_info              :")
    assert lines[i + 1:] == ["node:    memsize    memfree    distances",
                             "   0:      8192       6000      10,21",
                             "   1:      8192       7000      21,10"]


def test_placement_prefers_the_node_with_more_free_memory(tmp_path: Path) -> None:
    topo = read_topology(fake_sysfs(tmp_path, [("0-3", 8192, 6000), ("4-7", 8192, 7000)],
                                    TWO))
    c = place(topo, 1024 << 10, 2)
    assert c.nodes == (1,)
    assert topo.cpus_of(list(c.nodes)) == [4, 5, 6, 7]


def test_placement_prefers_the_node_with_fewer_vcpus_placed(tmp_path: Path) -> None:
    topo = read_topology(fake_sysfs(tmp_path, [("0-3", 8192, 6000), ("4-7", 8192, 7000)],
                                    TWO))
    # a 4-vCPU domain already runs on node 1: node 0 wins despite less free memory
    assert place(topo, 1024 << 10, 2, [([4, 5, 6, 7], 4)]).nodes == (0,)
    # equal load: free memory decides again
    assert place(topo, 1024 << 10, 2, [([4, 5, 6, 7], 2), ([0, 1], 2)]).nodes == (1,)


def test_placement_spans_the_fewest_nodes_that_fit(tmp_path: Path) -> None:
    topo = read_topology(fake_sysfs(tmp_path, [("0-1", 4096, 1000), ("2-3", 4096, 3000),
                                               ("4-5", 4096, 2500), ("6-7", 4096, 500)],
                                    FOUR))
    assert place(topo, 2048 << 10, 1).nodes == (1,)  # one node fits: the freest
    assert place(topo, 2800 << 10, 1).nodes == (1,)
    # 4000 MiB fits on no single node: the pair with the most free memory
    assert place(topo, 4000 << 10, 1).nodes == (1, 2)
    # 3 vCPUs need 2 nodes' CPUs (2 each) even though memory fits on one
    assert place(topo, 100 << 10, 3).nodes == (1, 2)
    # load on node 1 moves a 2-node domain to the least loaded pair
    assert place(topo, 3400 << 10, 1, [([2, 3], 2)]).nodes == (0, 2)
    assert place(topo, 6500 << 10, 1).nodes == (0, 1, 2)


def test_placement_fails_when_nothing_fits(tmp_path: Path) -> None:
    topo = read_topology(fake_sysfs(tmp_path, [("0-1", 4096, 1000), ("2-3", 4096, 1000)],
                                    TWO))
    with pytest.raises(NumaError, match="no set of nodes has 4096 MiB free"):
        place(topo, 4096 << 10, 1)


def test_host_without_numa_sysfs_is_one_node(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 2048 kB\nMemFree: 1024 kB\n")
    topo = read_topology(tmp_path / "sys")
    assert len(topo.nodes) == 1 and topo.nodes[0].mem_total_kib == 2048
    assert place(topo, 512, 1).nodes == (0,)


def test_bad_cpulist_is_one_line() -> None:
    with pytest.raises(NumaError, match="bad cpulist"):
        parse_cpulist("0-x")
