"""Host cgroups for the credit scheduler's weights and caps and for cpupools' CPUs.

Each domain's VMM process lives in its own group ``<base>/d<domid>`` under a pyxen group
named after hostd's run directory (parallel hosts never share one). cgroup v1 (separate
``cpu`` and ``cpuset`` hierarchies: cpu.shares, cpu.cfs_quota_us, cpuset.cpus) and v2
(one hierarchy: cpu.weight, cpu.max, cpuset.cpus) are both handled; :func:`detect` picks
the one mounted. The root is a parameter so that a fake cgroupfs tree can stand in.

Mapping of Xen's parameters: a weight w (1..65535, Xen's default 256) is proportional to
cpu.shares = 4 w (the default 1024 for 256) or cpu.weight = w * 100 / 256 (the default
100 for 256, clamped to v2's 1..10000); a cap c (percent of one CPU, 0 = none) is a CFS
quota of c % of a 100 ms period.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

CFS_PERIOD_US = 100_000


class CgroupError(Exception):
    """The host's cgroups could not be set up or written."""


def shares_for(weight: int) -> int:
    return max(2, min(262144, weight * 4))


def cpu_weight_for(weight: int) -> int:
    return max(1, min(10000, weight * 100 // 256))


def quota_for(cap: int) -> int | None:
    """CFS quota (us per CFS_PERIOD_US) for a cap in % of one CPU; None: unlimited."""
    return None if cap <= 0 else cap * CFS_PERIOD_US // 100


def base_name(rundir: str | Path) -> str:
    return "pyxen-" + hashlib.sha1(str(Path(rundir).resolve()).encode()).hexdigest()[:12]


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}: {e.strerror}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
        # a fake tree (tests): plain files stand for the interface files
        for child in path.iterdir():
            if child.is_dir():
                _rmdir(child)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
        path.rmdir()


class Cgroups:
    """The domain groups of one hostd; ``version`` is 1 or 2."""

    version = 0

    def __init__(self, base: str) -> None:
        self.base = base

    # the hierarchies this backend writes: (root, base dir) pairs
    def hierarchies(self) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    def group(self, domid: int) -> list[Path]:
        return [b / f"d{domid}" for _, b in self.hierarchies()]

    def setup(self) -> None:
        raise NotImplementedError

    def create(self, domid: int, pid: int, cpus: set[int]) -> None:
        raise NotImplementedError

    def set_weight(self, domid: int, weight: int) -> None:
        raise NotImplementedError

    def set_cap(self, domid: int, cap: int) -> None:
        raise NotImplementedError

    def set_cpus(self, domid: int, cpus: set[int]) -> None:
        raise NotImplementedError

    def remove(self, domid: int) -> None:
        """The domain's groups go; tasks still in them move to the root first."""
        for root, base in self.hierarchies():
            g = base / f"d{domid}"
            if not g.exists():
                continue
            for pid in _read(g / "cgroup.procs").split():
                with contextlib.suppress(CgroupError):
                    _write(root / "cgroup.procs", pid)
            with contextlib.suppress(OSError):
                _rmdir(g)

    def prune(self) -> list[int]:
        """Domain groups a hostd that died left behind with no task in them go."""
        gone = []
        for _, base in self.hierarchies():
            if not base.exists():
                continue
            for d in base.iterdir():
                if d.is_dir() and d.name[:1] == "d" and d.name[1:].isdigit() and \
                        not _read(d / "cgroup.procs"):
                    with contextlib.suppress(OSError):
                        _rmdir(d)
                        gone.append(int(d.name[1:]))
        return sorted(set(gone))

    def teardown(self) -> None:
        """hostd exits: every domain group and the base group go."""
        for _, base in self.hierarchies():
            if not base.exists():
                continue
            for d in base.iterdir():
                if d.is_dir() and d.name.startswith("d") and d.name[1:].isdigit():
                    self.remove(int(d.name[1:]))
            with contextlib.suppress(OSError):
                _rmdir(base)


def _cpus_text(cpus: set[int]) -> str:
    from .cpulist import fmt
    return fmt(cpus)


class CgroupsV1(Cgroups):
    version = 1

    def __init__(self, cpu_root: Path, cpuset_root: Path, base: str) -> None:
        super().__init__(base)
        self.cpu_root, self.cpuset_root = cpu_root, cpuset_root

    def hierarchies(self) -> list[tuple[Path, Path]]:
        return [(self.cpu_root, self.cpu_root / self.base),
                (self.cpuset_root, self.cpuset_root / self.base)]

    def _cpuset_dir(self, parent: Path, d: Path) -> None:
        d.mkdir(exist_ok=True)
        for f in ("cpuset.mems", "cpuset.cpus"):  # a new cpuset starts empty
            if not _read(d / f):
                _write(d / f, _read(parent / f))

    def setup(self) -> None:
        try:
            (self.cpu_root / self.base).mkdir(exist_ok=True)
            self._cpuset_dir(self.cpuset_root, self.cpuset_root / self.base)
        except OSError as e:
            raise CgroupError(f"cannot create the pyxen cgroup {self.base}: "
                              f"{e.strerror}") from None

    def create(self, domid: int, pid: int, cpus: set[int]) -> None:
        cg, cs = self.group(domid)
        try:
            cg.mkdir(exist_ok=True)
            self._cpuset_dir(self.cpuset_root / self.base, cs)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup for domain {domid}: {e.strerror}") \
                from None
        _write(cs / "cpuset.cpus", _cpus_text(cpus))
        _write(cg / "cgroup.procs", str(pid))
        _write(cs / "cgroup.procs", str(pid))

    def set_weight(self, domid: int, weight: int) -> None:
        _write(self.group(domid)[0] / "cpu.shares", str(shares_for(weight)))

    def set_cap(self, domid: int, cap: int) -> None:
        g = self.group(domid)[0]
        q = quota_for(cap)
        _write(g / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(g / "cpu.cfs_quota_us", "-1" if q is None else str(q))

    def set_cpus(self, domid: int, cpus: set[int]) -> None:
        _write(self.group(domid)[1] / "cpuset.cpus", _cpus_text(cpus))


class CgroupsV2(Cgroups):
    version = 2

    def __init__(self, root: Path, base: str) -> None:
        super().__init__(base)
        self.root = root

    def hierarchies(self) -> list[tuple[Path, Path]]:
        return [(self.root, self.root / self.base)]

    def setup(self) -> None:
        b = self.root / self.base
        try:
            b.mkdir(exist_ok=True)
        except OSError as e:
            raise CgroupError(f"cannot create the pyxen cgroup {self.base}: "
                              f"{e.strerror}") from None
        for d in (self.root, b):
            have = _read(d / "cgroup.subtree_control").split()
            want = [c for c in ("cpu", "cpuset") if c not in have]
            if want:
                _write(d / "cgroup.subtree_control", " ".join("+" + c for c in want))

    def create(self, domid: int, pid: int, cpus: set[int]) -> None:
        (g,) = self.group(domid)
        try:
            g.mkdir(exist_ok=True)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup for domain {domid}: {e.strerror}") \
                from None
        _write(g / "cpuset.cpus", _cpus_text(cpus))
        _write(g / "cgroup.procs", str(pid))

    def set_weight(self, domid: int, weight: int) -> None:
        _write(self.group(domid)[0] / "cpu.weight", str(cpu_weight_for(weight)))

    def set_cap(self, domid: int, cap: int) -> None:
        q = quota_for(cap)
        _write(self.group(domid)[0] / "cpu.max",
               f"{'max' if q is None else q} {CFS_PERIOD_US}")

    def set_cpus(self, domid: int, cpus: set[int]) -> None:
        _write(self.group(domid)[0] / "cpuset.cpus", _cpus_text(cpus))


def detect(rundir: str | Path, root: str | Path = "/sys/fs/cgroup") -> Cgroups | None:
    """The cgroup version mounted at root (v2 if root is a cgroup2 mount, else v1 with
    cpu and cpuset hierarchies); None when neither is usable."""
    root = Path(root)
    base = base_name(rundir)
    if (root / "cgroup.controllers").exists():
        ctrls = _read(root / "cgroup.controllers").split()
        if "cpu" in ctrls and "cpuset" in ctrls:
            return CgroupsV2(root, base)
        return None
    cpu = next((root / n for n in ("cpu", "cpu,cpuacct") if (root / n / "cpu.shares").exists()),
               None)
    cpuset = root / "cpuset"
    if cpu is not None and (cpuset / "cpuset.cpus").exists():
        return CgroupsV1(cpu, cpuset, base)
    return None


def from_env(rundir: str | Path) -> Cgroups | None:
    """detect() at PYXEN_CGROUP_ROOT (tests) or /sys/fs/cgroup; unusable without root."""
    root = os.environ.get("PYXEN_CGROUP_ROOT", "/sys/fs/cgroup")
    if os.environ.get("PYXEN_CGROUP_ROOT") is None and os.geteuid() != 0:
        return None
    return detect(rundir, root)
