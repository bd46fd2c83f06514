"""cpupools: named sets of host CPUs, each with its scheduler; every domain is in one.

Pool-0 (id 0) holds every host CPU at start; a CPU belongs to at most one pool; a
domain in a pool runs only on its CPUs (hostd writes them to the domain's cpuset).
Pure logic over a :class:`~pyxen.toolstack.cpulist.Topology`, errors worded as xl's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cpulist import Topology

SCHEDULERS = ("credit", "credit2")
CREDIT_TSLICE_MS, CREDIT_RATELIMIT_US = 30, 1000  # Xen's defaults
TSLICE_MIN, TSLICE_MAX = 1, 1000  # XEN_SYSCTL_CSCHED_TSLICE_*
RATELIMIT_MIN, RATELIMIT_MAX = 100, 500000  # XEN_SYSCTL_SCHED_RATELIMIT_*


class PoolError(Exception):
    """One line, as xl prints it."""


@dataclass
class Pool:
    poolid: int
    name: str
    sched: str = "credit"
    cpus: set[int] = field(default_factory=set)
    tslice_ms: int = CREDIT_TSLICE_MS
    ratelimit_us: int = CREDIT_RATELIMIT_US
    migration_delay_us: int = 0


class CpuPools:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.pools: dict[int, Pool] = {0: Pool(0, "Pool-0", "credit", set(topo.all))}
        self.next_id = 1

    def find(self, qualifier: object) -> Pool:
        text = str(qualifier)
        for p in self.pools.values():
            if p.name == text:
                return p
        if text.isdigit() and int(text) in self.pools:
            return self.pools[int(text)]
        raise PoolError(f"unknown cpupool '{text}'")

    def free_cpus(self) -> set[int]:
        used: set[int] = set()
        for p in self.pools.values():
            used |= p.cpus
        return self.topo.all - used

    def create(self, name: str, sched: str = "credit", cpus: set[int] | None = None) -> Pool:
        if not name:
            raise PoolError("Missing cpupool name")
        if any(p.name == name for p in self.pools.values()):
            raise PoolError(f"Pool name \"{name}\" already exists")
        if sched not in SCHEDULERS:
            raise PoolError(f"Unknown scheduler \"{sched}\" (pyxen has {', '.join(SCHEDULERS)})")
        cpus = set(cpus or ())
        free = self.free_cpus()
        for c in sorted(cpus):
            if c not in free:
                raise PoolError(f"cpu {c} illegal!" if c >= self.topo.ncpus
                                else f"cpu {c} isn't free (it belongs to cpupool "
                                     f"{self._owner(c).name})")
        pool = Pool(self.next_id, name, sched, cpus)
        self.pools[pool.poolid] = pool
        self.next_id += 1
        return pool

    def _owner(self, cpu: int) -> Pool:
        return next(p for p in self.pools.values() if cpu in p.cpus)

    def destroy(self, pool: Pool, ndomains: int) -> None:
        if pool.poolid == 0:
            raise PoolError("Cannot destroy Pool-0: it is the host's pool")
        if ndomains:
            raise PoolError(f"Cannot destroy cpupool {pool.name}: {ndomains} domain(s) "
                            "still in it (cpupool-migrate them first)")
        del self.pools[pool.poolid]

    def rename(self, pool: Pool, name: str) -> None:
        if any(p.name == name and p is not pool for p in self.pools.values()):
            raise PoolError(f"Pool name \"{name}\" already exists")
        if not name:
            raise PoolError("Missing cpupool name")
        pool.name = name

    def cpu_add(self, pool: Pool, cpus: set[int]) -> None:
        free = self.free_cpus()
        for c in sorted(cpus):
            if c in pool.cpus:
                continue
            if c not in free:
                raise PoolError(f"cpu {c} isn't free (it belongs to cpupool "
                                f"{self._owner(c).name})")
        pool.cpus |= cpus

    def cpu_remove(self, pool: Pool, cpus: set[int], ndomains: int) -> None:
        for c in sorted(cpus):
            if c not in pool.cpus:
                raise PoolError(f"cpu {c} is not in cpupool {pool.name}")
        if ndomains and not pool.cpus - cpus:
            raise PoolError(f"Cannot remove the last cpu of cpupool {pool.name}: "
                            f"{ndomains} domain(s) run in it")
        pool.cpus -= cpus

    def set_params(self, pool: Pool, tslice: int | None, ratelimit: int | None,
                   migr: int | None) -> None:
        """libxl_sched_credit_params_set's checks, then the change (or none)."""
        t = pool.tslice_ms if tslice is None else tslice
        r = pool.ratelimit_us if ratelimit is None else ratelimit
        if not TSLICE_MIN <= t <= TSLICE_MAX:
            raise PoolError(f"Time slice out of range, valid range is from {TSLICE_MIN} "
                            f"to {TSLICE_MAX}")
        if r and not RATELIMIT_MIN <= r <= RATELIMIT_MAX:
            raise PoolError(f"Ratelimit out of range, valid range is from {RATELIMIT_MIN} "
                            f"to {RATELIMIT_MAX}")
        if r > t * 1000:
            raise PoolError("Ratelimit cannot be greater than timeslice")
        if migr is not None and not 0 <= migr <= 100000:
            raise PoolError("vCPU migration delay out of range, valid range is from 0 to "
                            "100000")
        pool.tslice_ms, pool.ratelimit_us = t, r
        if migr is not None:
            pool.migration_delay_us = migr


def check_weight(weight: int) -> None:
    if not 1 <= weight <= 65535:
        raise PoolError("Cpu weight out of range, valid values are within range from 1 "
                        "to 65535")


def check_cap(cap: int, maxvcpus: int) -> None:
    if not 0 <= cap <= maxvcpus * 100:
        raise PoolError(f"Cpu cap out of range, valid range is from 0 to {maxvcpus * 100} "
                        "for specified number of vcpus")
