"""NUMA for the toolstack: the host's topology from sysfs (what Xen's physinfo /
numainfo / cputopology sysctls report), `xl info -n`'s sections, and libxl's automatic
placement of a new domain (libxl_numa.c, libxl_dom.c:numa_place_domain).

The sysfs root is a parameter so tests describe 2- and 4-node hosts with a fake tree.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


class NumaError(Exception):
    """A topology or placement problem, one line for the administrator."""


@dataclass
class Node:
    id: int
    cpus: list[int]
    mem_total_kib: int
    mem_free_kib: int
    distances: list[int] = field(default_factory=list)


@dataclass
class Cpu:
    id: int
    core: int
    socket: int
    node: int


@dataclass
class Topology:
    nodes: list[Node]
    cpus: list[Cpu]

    def node(self, nid: int) -> Node:
        for n in self.nodes:
            if n.id == nid:
                return n
        raise NumaError(f"no NUMA node {nid} on this host")

    def cpus_of(self, nodes: list[int]) -> list[int]:
        return sorted(c for nid in nodes for c in self.node(nid).cpus)


def parse_cpulist(text: str) -> list[int]:
    """sysfs' cpulist format: "0-3,8,10-11" (empty for a CPU-less node)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise NumaError(f"bad cpulist {text.strip()!r}")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def _node_meminfo(path: Path) -> tuple[int, int]:
    """(MemTotal, MemFree) in KiB from a node's meminfo ("Node 0 MemTotal:  123 kB")."""
    total = free = 0
    for line in _read(path).splitlines():
        m = re.match(r"Node\s+\d+\s+(\w+):\s+(\d+)", line)
        if m and m.group(1) == "MemTotal":
            total = int(m.group(2))
        elif m and m.group(1) == "MemFree":
            free = int(m.group(2))
    return total, free


def read_topology(sysfs: str | os.PathLike[str] = "/sys") -> Topology:
    """The host's nodes and CPUs; a host without NUMA in sysfs is one node holding all."""
    root = Path(sysfs)
    ndir = root / "devices/system/node"
    nodes: list[Node] = []
    try:
        names = sorted((p for p in os.listdir(ndir) if re.fullmatch(r"node\d+", p)),
                       key=lambda p: int(p[4:]))
    except OSError:
        names = []
    for name in names:
        d = ndir / name
        total, free = _node_meminfo(d / "meminfo")
        dist = [int(x) for x in _read(d / "distance").split() if x.isdigit()]
        nodes.append(Node(int(name[4:]), parse_cpulist(_read(d / "cpulist")), total, free,
                          dist))
    if not nodes:
        ncpu = os.cpu_count() or 1
        mi = _meminfo(root.parent / "proc/meminfo" if str(root) != "/sys"
                      else Path("/proc/meminfo"))
        nodes = [Node(0, list(range(ncpu)), mi.get("MemTotal", 0), mi.get("MemFree", 0),
                      [10])]
    for n in nodes:
        if len(n.distances) != len(nodes):
            n.distances = [10 if m.id == n.id else 20 for m in nodes]
    node_of = {c: n.id for n in nodes for c in n.cpus}
    cpus = []
    for c in sorted(node_of):
        t = root / f"devices/system/cpu/cpu{c}/topology"
        core = _read(t / "core_id", str(c)).strip()
        sock = _read(t / "physical_package_id", "0").strip()
        cpus.append(Cpu(c, int(core) if core.lstrip("-").isdigit() else c,
                        int(sock) if sock.lstrip("-").isdigit() else 0, node_of[c]))
    return Topology(nodes, cpus)


def _meminfo(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        k, _, rest = line.partition(":")
        if rest.split() and rest.split()[0].isdigit():
            out[k] = int(rest.split()[0])
    return out


# --- xl info -n -------------------------------------------------------------------------


def info_sections(topo: Topology) -> list[str]:
    """xl_info.c's output_topologyinfo and output_numainfo, line by line."""
    out = ["cpu_topology           :", "cpu:    core    socket     node"]
    out += [f"{c.id:3d}:    {c.core:4d}     {c.socket:4d}     {c.node:4d}" for c in topo.cpus]
    out += ["device topology        :", "device           node",
            "No device topology data available"]
    out += ["numa_info              :", "node:    memsize    memfree    distances"]
    for n in topo.nodes:
        out.append(f"{n.id:4d}:    {n.mem_total_kib >> 10:6d}     {n.mem_free_kib >> 10:6d}"
                   f"      {','.join(str(d) for d in n.distances)}")
    return out


# --- automatic placement (libxl__get_numa_candidate + numa_cmpf) ------------------------


@dataclass(frozen=True)
class Candidate:
    nodes: tuple[int, ...]
    free_kib: int
    nr_cpus: int
    nr_vcpus: int  # vCPUs of existing domains that may run on these nodes' CPUs


def place(topo: Topology, mem_kib: int, vcpus: int,
          placed: list[tuple[list[int], int]] = ()) -> Candidate:  # type: ignore[assignment]
    """The node set for a new domain needing mem_kib and vcpus, as libxl picks it: the
    smallest number of nodes whose free memory holds the domain and whose CPUs are at
    least its vCPUs; among those, fewest vCPUs already placed there, then most free
    memory. `placed` is (cpus the domain may run on, its vCPUs) for each existing domain.
    A host of one node needs no choosing: that node."""
    usable = [n for n in topo.nodes if n.cpus]
    if not usable:
        raise NumaError("no NUMA node with CPUs")
    for size in range(1, len(usable) + 1):
        best: Candidate | None = None
        for combo in itertools.combinations(usable, size):
            cpus = {c for n in combo for c in n.cpus}
            cand = Candidate(tuple(n.id for n in combo),
                             sum(n.mem_free_kib for n in combo), len(cpus),
                             sum(v for dcpus, v in placed if cpus & set(dcpus)))
            if cand.free_kib < mem_kib or cand.nr_cpus < vcpus:
                continue
            if best is None or (cand.nr_vcpus, -cand.free_kib) < (best.nr_vcpus,
                                                                  -best.free_kib):
                best = cand
        if best is not None:
            return best
    raise NumaError(f"NUMA placement failed: no set of nodes has {mem_kib >> 10} MiB free "
                    f"and {vcpus} CPUs")


# --- hostd's side ------------------------------------------------------------------------


def sysfs_root() -> str:
    """The sysfs hostd reads (PYXEN_SYSFS: a described topology, for tests)."""
    return os.environ.get("PYXEN_SYSFS", "/sys")


def has_affinity(cfg) -> bool:
    """An explicit cpus= / cpus_soft= (the scheduler part's keys) turns placement off, as
    libxl skips numa_place_domain when the domain has hard or soft affinity."""
    return any(getattr(cfg, key, None) for key in ("cpus", "cpus_soft"))


def auto_place(cfg, others: list) -> str:
    """Choose cfg.numa_nodes for a new domain (the others: configs of running domains);
    returns hostd's log line. A failed placement only warns, as libxl's does."""
    cfg.numa_nodes = []
    if has_affinity(cfg):
        return f"{cfg.name}: explicit CPU affinity: no automatic NUMA placement"
    if getattr(cfg, "vnuma", None):
        return f"{cfg.name}: vNUMA with pnodes: no automatic NUMA placement"
    try:
        topo = read_topology(sysfs_root())
        placed = [(topo.cpus_of(o.numa_nodes), o.vcpus) for o in others if o.numa_nodes]
        cand = place(topo, cfg.memory * 1024, cfg.vcpus, placed)
    except NumaError as e:
        return f"{cfg.name}: {e}, performance might be affected"
    cfg.numa_nodes = list(cand.nodes)
    return (f"{cfg.name}: NUMA placement candidate with {len(cand.nodes)} node(s) "
            f"({','.join(map(str, cand.nodes))}), {cand.nr_cpus} CPUs and "
            f"{cand.free_kib >> 10} MiB free selected; soft affinity "
            f"{format_cpulist(topo.cpus_of(list(cand.nodes)))}")


def soft_affinity(cfg) -> list[int]:
    """The placed domain's soft affinity: its nodes' CPUs (libxl sets them so)."""
    if not getattr(cfg, "numa_nodes", None):
        return []
    try:
        return read_topology(sysfs_root()).cpus_of(cfg.numa_nodes)
    except NumaError:
        return []


def format_cpulist(cpus: list[int]) -> str:
    out: list[str] = []
    for _, grp in itertools.groupby(enumerate(sorted(cpus)), lambda t: t[1] - t[0]):
        run = [c for _, c in grp]
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


# --- vnuma= in xl.cfg (xl_parse.c parse_vnuma_config, libxl__vnuma_config_check) ------------


def vnuma_from_xlconfig(cfg, memory: int, maxmem: int, vcpus: int,
                        maxvcpus: int) -> tuple[list[dict], int, int]:
    """[["pnode=0", "size=512", "vcpus=0-1", "vdistances=10,20"], ...] -> config.json's
    vnodes, and maxmem / maxvcpus as the vnodes define them (sizes in MiB add up to
    maxmem, every vCPU in exactly one vnode). Errors are cfg.error("vnuma", ...)."""
    spec = cfg.get_list("vnuma")
    if not spec:
        return [], maxmem, maxvcpus
    n = len(spec)
    nr_host = len(read_topology(sysfs_root()).nodes)
    nodes: list[dict] = []
    for i, item in enumerate(spec):
        if not isinstance(item, list):
            raise cfg.error("vnuma", "xl: cannot get vnode config option list")
        node: dict = {"pnode": 0, "size": 0, "vcpus": [],
                      "vdistances": [10 if j == i else 20 for j in range(n)]}
        for opt in item:
            if not isinstance(opt, str):
                continue
            key, sep, value = opt.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                raise cfg.error("vnuma", f'xl: failed to split "{opt}" into pair')
            try:
                if key == "pnode":
                    node["pnode"] = int(value, 0)
                    if not 0 <= node["pnode"] < nr_host:
                        raise cfg.error("vnuma", f"xl: invalid pnode number: {value}")
                elif key == "size":
                    node["size"] = int(value, 0)
                elif key == "vcpus":
                    node["vcpus"] += parse_cpulist(value)
                elif key == "vdistances":
                    node["vdistances"] = [int(x, 0) for x in value.split(",")]
            except (ValueError, NumaError):
                raise cfg.error("vnuma", f"xl: vnode {i}: invalid {key}: {value}") from None
        if node["size"] <= 0:
            raise cfg.error("vnuma", f"xl: vnode {i} has no memory (size=)")
        if len(node["vdistances"]) != n:
            raise cfg.error("vnuma", f"xl: vnode {i} has {len(node['vdistances'])} "
                            f"vdistances, {n} vnodes need {n}")
        nodes.append(node)
    cpus = [c for node in nodes for c in node["vcpus"]]
    if "maxvcpus" in cfg and maxvcpus != len(cpus):
        raise cfg.error("vnuma", "xl: vnuma vcpus and maxvcpus= mismatch")
    maxvcpus = len(cpus)
    if sorted(cpus) != list(range(maxvcpus)):
        dup = sorted({c for c in cpus if cpus.count(c) > 1})
        raise cfg.error("vnuma", f"xl: vcpu {dup[0]} is in more than one vnode" if dup
                        else "xl: vnuma vcpus must be 0..N-1, each in one vnode")
    total = sum(node["size"] for node in nodes)
    if "maxmem" in cfg and maxmem != total:
        raise cfg.error("vnuma", "xl: maxmem and vnuma memory size mismatch")
    if memory > total:
        raise cfg.error("vnuma", f"xl: memory={memory} is more than the vnodes' "
                        f"{total} MiB")
    if vcpus > maxvcpus:
        raise cfg.error("vnuma", f"xl: vcpus={vcpus} is more than the vnodes' {maxvcpus}")
    return nodes, total, maxvcpus
