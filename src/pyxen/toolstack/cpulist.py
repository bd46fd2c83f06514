"""xl's cpu-list syntax (xl.cfg(5) ``cpus=``, ``xl vcpu-pin``, ``xl cpupool-*``).

A list is comma-separated items, each ``all``, ``N``, ``N-M``, ``nodes:N`` or
``nodes:N-M`` (``node:`` too), and any item may be prefixed with ``^`` to take those CPUs
out again. Items are applied left to right, as xl's parse_cpurange() does. The host's
CPUs and NUMA nodes are a :class:`Topology`, so the logic is testable against described
hosts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


class CpuListError(ValueError):
    """A bad cpu-list, worded as xl words it."""


@dataclass
class Topology:
    """Host CPUs and the CPUs of each NUMA node."""

    ncpus: int
    nodes: dict[int, set[int]] = field(default_factory=dict)

    @classmethod
    def from_sysfs(cls, root: str | Path = "/sys/devices/system") -> Topology:
        root = Path(root)
        try:
            ncpus = len(parse_ranges((root / "cpu" / "possible").read_text().strip()))
        except (OSError, CpuListError):
            ncpus = os.cpu_count() or 1
        nodes: dict[int, set[int]] = {}
        try:
            for d in (root / "node").iterdir():
                if d.name.startswith("node") and d.name[4:].isdigit():
                    nodes[int(d.name[4:])] = parse_ranges((d / "cpulist").read_text().strip())
        except (OSError, CpuListError):
            pass
        if not nodes:
            nodes = {0: set(range(ncpus))}
        return cls(ncpus, nodes)

    @property
    def all(self) -> set[int]:
        return set(range(self.ncpus))


def parse_ranges(text: str) -> set[int]:
    """Linux's "0-3,5" lists (sysfs, cpuset.cpus)."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise CpuListError(f"Invalid argument {part}") from None
        if a < 0 or b < a:
            raise CpuListError(f"Invalid argument {part}")
        out.update(range(a, b + 1))
    return out


def parse(text: str, topo: Topology) -> set[int]:
    """One xl cpu-list to a set of host CPUs; every CPU must exist on the host."""
    cpus: set[int] = set()
    if not text.strip():
        raise CpuListError("Invalid argument ")
    for raw in text.split(","):
        item = raw.strip()
        neg = item.startswith("^")
        if neg:
            item = item[1:]
        if item == "all":
            sel = topo.all
        elif item.startswith(("nodes:", "node:")):
            sel = set()
            for n in parse_ranges(item.partition(":")[2]) if item.partition(":")[2] else {-1}:
                if n not in topo.nodes:
                    raise CpuListError(f"node {n} does not exist (the host has "
                                       f"{len(topo.nodes)} node(s))")
                sel |= topo.nodes[n]
        else:
            try:
                sel = parse_ranges(item)
            except CpuListError:
                raise CpuListError(f"Invalid argument {raw.strip()}") from None
            if not sel:
                raise CpuListError(f"Invalid argument {raw.strip()}")
            bad = max(sel)
            if bad >= topo.ncpus:
                raise CpuListError(f"cpu {bad} illegal (the host has {topo.ncpus} CPUs: "
                                   f"0-{topo.ncpus - 1})")
        cpus = cpus - sel if neg else cpus | sel
    if not cpus:
        raise CpuListError(f"cpu-list {text!r} selects no CPU")
    return cpus


def fmt(cpus: set[int] | list[int], topo: Topology | None = None) -> str:
    """As xl prints a cpumap: "all" when it is every host CPU, else ranges."""
    s = sorted(set(cpus))
    if topo is not None and set(s) == topo.all:
        return "all"
    if not s:
        return "none"
    parts, start, prev = [], s[0], s[0]
    for c in s[1:] + [None]:  # type: ignore[list-item]
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if c is not None:
            start = prev = c
    return ",".join(parts)
