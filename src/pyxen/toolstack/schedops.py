"""hostd's resource-control ops: credit weights/caps (cgroups), vCPU placement and
vcpu-set, cpupools. hostd calls :func:`host_start`, :func:`domain_built`,
:func:`domain_gone`, :func:`host_stop` and, for the ops in :data:`OPS`, :func:`sched_op`.

Ops (see docs/sched.md):
  sched_get     sched, pool?                  -> pools: [{name, poolid, sched, tslice_ms,
                                                 ratelimit_us, migration_delay_us, domains}]
  sched_set     domain, weight?, cap?
  sched_params  sched, pool?, tslice?, ratelimit?, migr?  -> pool
  vcpu_list     domains?                      -> vcpus: [{name, domid, vcpu, cpu, ...}]
  vcpu_pin      domain, vcpu ("all"|N), hard, soft?
  vcpu_set      domain, count
  cpupool_list  pool?                         -> pools
  cpupool_create name, sched?, cpus?          -> poolid
  cpupool_destroy|cpupool_rename|cpupool_cpu_add|cpupool_cpu_remove|cpupool_migrate
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from . import cgroups as cgmod
from . import cpulist
from .cpupool import CpuPools, Pool, PoolError, check_cap, check_weight

OPS = ("sched_get", "sched_set", "sched_params", "vcpu_list", "vcpu_pin", "vcpu_set",
       "cpupool_list", "cpupool_create", "cpupool_destroy", "cpupool_rename",
       "cpupool_cpu_add", "cpupool_cpu_remove", "cpupool_migrate")


@dataclass
class DomSched:
    weight: int
    cap: int
    poolid: int
    hard: list[set[int]] = field(default_factory=list)
    soft: list[set[int]] = field(default_factory=list)


class SchedState:
    def __init__(self, hostd: Any) -> None:
        self.topo = cpulist.Topology.from_sysfs()
        self.pools = CpuPools(self.topo)
        self.doms: dict[int, DomSched] = {}
        # domid -> its VMM's move into its cgroups, under way while the VMM builds
        self.placing: dict[int, tuple[asyncio.Future[None], set[int]]] = {}
        self.cg: cgmod.Cgroups | None = None
        try:
            self.cg = cgmod.from_env(hostd.root)
            if self.cg is not None:
                self.cg.setup()
                self.cg.prune()
                hostd.xen_log(f"cgroup v{self.cg.version} scheduling: group {self.cg.base}")
        except cgmod.CgroupError as e:
            hostd.xen_log(f"cgroups unusable ({e}): weights, caps and cpupools not enforced")
            self.cg = None
        if self.cg is None:
            hostd.xen_log("no usable cgroups: weights, caps and cpupools are not enforced")

    def pool_of(self, cfg: Any) -> Pool:
        """The cpupool xl.cfg's pool= names (Pool-0 without one); PoolError if none."""
        return self.pools.find(cfg.pool if cfg.pool is not None else 0)

    def ndomains(self, pool: Pool) -> int:
        return sum(1 for d in self.doms.values() if d.poolid == pool.poolid) + \
            (1 if pool.poolid == 0 else 0)  # Domain-0 is in Pool-0


def state(hostd: Any) -> SchedState:
    st = getattr(hostd, "_sched_state", None)
    if st is None:
        st = hostd._sched_state = SchedState(hostd)
    return st


def host_start(hostd: Any) -> None:
    state(hostd)


def host_stop(hostd: Any) -> None:
    st = getattr(hostd, "_sched_state", None)
    if st is not None and st.cg is not None:
        st.cg.teardown()


def _err(e: Exception) -> Exception:
    # ConfigError: hostd answers it as one line (its OpError is __main__'s own class)
    from .config import ConfigError
    return ConfigError(str(e))


def _affinities(spec: Any, n: int, topo: cpulist.Topology) -> list[set[int]]:
    """xl.cfg cpus=: a string for every vCPU, or a list: entry i for vCPU i (the others
    get every CPU)."""
    if spec is None:
        return [set(topo.all) for _ in range(n)]
    if isinstance(spec, str):
        cpus = cpulist.parse(spec, topo)
        return [set(cpus) for _ in range(n)]
    out = []
    for i in range(n):
        out.append(cpulist.parse(spec[i], topo) if i < len(spec) else set(topo.all))
    return out


async def _apply_affinity(hostd: Any, dom: Any, ds: DomSched, pool: Pool,
                          vcpus: range | list[int] | None = None,
                          break_ok: bool = False) -> None:
    for i in vcpus if vcpus is not None else range(len(ds.hard)):
        eff = ds.hard[i] & pool.cpus
        if not eff:
            if not break_ok:
                raise _err(PoolError(f"vcpu {i}: hard affinity {cpulist.fmt(ds.hard[i])} has "
                                     f"no CPU in cpupool {pool.name}"))
            hostd.xen_log(f"d{dom.domid}v{i}: breaking affinity {cpulist.fmt(ds.hard[i])} "
                          f"(not in cpupool {pool.name})")
            ds.hard[i] = set(st_topo_all(hostd))
            eff = set(pool.cpus)
        await hostd._vmm(dom, "vcpu_affinity", vcpu=i, cpus=sorted(eff))


def st_topo_all(hostd: Any) -> set[int]:
    return state(hostd).topo.all


def domain_spawned(hostd: Any, dom: Any) -> None:
    """The VMM process exists and is building the domain: start moving it into its cgroups
    (a worker thread: the first write to cgroup.procs waits out an RCU grace period, ~10 ms
    here, as long as the rest of a create) for :func:`domain_built` to wait on. Its weight
    and cap are set only then: a capped domain's build is not slowed."""
    st = state(hostd)
    if st.cg is None or dom.pid is None:
        return
    cfg = dom.config
    try:
        pool = st.pool_of(cfg)
    except PoolError:
        return  # domain_built reports it
    if not pool.cpus:
        return
    cpus = set(pool.cpus)
    fut = asyncio.get_running_loop().run_in_executor(None, st.cg.create, dom.domid, dom.pid,
                                                     cpus)
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no log
    st.placing[dom.domid] = (fut, cpus)


async def domain_built(hostd: Any, dom: Any) -> None:
    """The VMM exists (paused): put it in its cgroup and pool, pin its vCPU threads."""
    st = state(hostd)
    cfg = dom.config
    placed = None  # the cpus of the pool the VMM was moved into while it built
    if (placing := st.placing.get(dom.domid)) is not None:
        with contextlib.suppress(Exception):  # its error, if any, comes again below
            await asyncio.shield(placing[0])
            placed = placing[1]
        st.placing.pop(dom.domid, None)
    try:
        pool = st.pool_of(cfg)
        if not pool.cpus:
            raise PoolError(f"cpupool {pool.name} has no CPUs: no domain can run in it")
        hard = _affinities(cfg.cpus, cfg.maxvcpus, st.topo)
        soft = _affinities(cfg.cpus_soft, cfg.maxvcpus, st.topo)
    except (PoolError, cpulist.CpuListError) as e:
        raise _err(e) from None
    ds = DomSched(cfg.cpu_weight, cfg.cap, pool.poolid, hard, soft)
    if st.cg is not None and dom.pid is not None:
        try:
            if placed is None:
                st.cg.create(dom.domid, dom.pid, pool.cpus)
            elif placed != pool.cpus:  # the pool changed meanwhile
                st.cg.set_cpus(dom.domid, pool.cpus)
            st.cg.set_weight(dom.domid, ds.weight)
            st.cg.set_cap(dom.domid, ds.cap)
        except cgmod.CgroupError as e:
            with contextlib.suppress(Exception):
                st.cg.remove(dom.domid)
            raise _err(e) from None
    st.doms[dom.domid] = ds
    try:
        await _apply_affinity(hostd, dom, ds, pool)
    except Exception:
        domain_gone(hostd, dom)
        raise


def domain_gone(hostd: Any, dom: Any) -> None:
    st = getattr(hostd, "_sched_state", None)
    if st is None:
        return
    st.doms.pop(dom.domid, None)
    placing = st.placing.pop(dom.domid, None)
    if placing is not None and st.cg is not None:  # it died before it was built
        cg, domid = st.cg, dom.domid  # the groups go once the move under way is over
        placing[0].add_done_callback(
            lambda f: f.get_loop().run_in_executor(None, _remove_when_empty, cg, domid))
        return
    if st.cg is not None:
        with contextlib.suppress(Exception):
            st.cg.remove(dom.domid)


def _remove_when_empty(cg: cgmod.Cgroups, domid: int) -> None:
    """A worker thread: the groups of a VMM that died while (or just after) being moved in
    go. A task moved in as it exits keeps its group busy (EBUSY) a little longer than its
    pid lives: retried for up to a second."""
    for _ in range(50):
        with contextlib.suppress(Exception):
            cg.remove(domid)
        if not any(g.exists() for g in cg.group(domid)):
            return
        time.sleep(0.02)


def _pool_json(st: SchedState, p: Pool, hostd: Any) -> dict[str, Any]:
    doms = [{"name": "Domain-0", "domid": 0, "weight": 256, "cap": 0}] if p.poolid == 0 else []
    for domid in sorted(st.doms):
        ds = st.doms[domid]
        if ds.poolid == p.poolid and domid in hostd.domains:
            doms.append({"name": hostd.domains[domid].config.name, "domid": domid,
                         "weight": ds.weight, "cap": ds.cap})
    return {"name": p.name, "poolid": p.poolid, "sched": p.sched, "tslice_ms": p.tslice_ms,
            "ratelimit_us": p.ratelimit_us, "migration_delay_us": p.migration_delay_us,
            "cpus": sorted(p.cpus), "cpulist": cpulist.fmt(p.cpus, st.topo) if p.cpus else "",
            "n_domains": st.ndomains(p), "domains": doms}


def _cpus_arg(st: SchedState, req: dict[str, Any], key: str = "cpus") -> set[int]:
    v = req.get(key)
    if isinstance(v, list):
        v = ",".join(str(x) for x in v)
    if not isinstance(v, str) or not v:
        raise PoolError("no CPU given")
    return cpulist.parse(v, st.topo)


async def sched_op(hostd: Any, op: str, req: dict[str, Any]) -> dict[str, Any]:
    try:
        return await _sched_op(hostd, state(hostd), op, req)
    except (PoolError, cpulist.CpuListError, cgmod.CgroupError) as e:
        raise _err(e) from None


async def _sched_op(hostd: Any, st: SchedState, op: str, req: dict[str, Any]) -> dict[str, Any]:
    if op == "vcpu_list":
        return {"vcpus": await vcpu_list(hostd, req.get("domains"))}
    if op in ("sched_get", "sched_params"):
        sched = req.get("sched", "credit")
        if req.get("pool") is not None:
            pools = [st.pools.find(req["pool"])]
        elif op == "sched_params":
            pools = [st.pools.pools[0]]
        else:
            pools = [p for p in st.pools.pools.values() if p.sched == sched]
        if op == "sched_params":
            p = pools[0]
            if p.sched != sched:
                raise PoolError(f"cpupool {p.name} uses the {p.sched} scheduler, not {sched}")
            if any(req.get(k) is not None for k in ("tslice", "ratelimit", "migr")):
                st.pools.set_params(p, _opt_int(req, "tslice"), _opt_int(req, "ratelimit"),
                                    _opt_int(req, "migr"))
            return {"pool": _pool_json(st, p, hostd)}
        return {"pools": [_pool_json(st, p, hostd) for p in pools]}
    if op == "cpupool_list":
        pools = [st.pools.find(req["pool"])] if req.get("pool") is not None else \
            sorted(st.pools.pools.values(), key=lambda p: p.poolid)
        return {"pools": [_pool_json(st, p, hostd) for p in pools]}
    if op == "cpupool_create":
        cpus = _cpus_arg(st, req) if req.get("cpus") else set()
        p = st.pools.create(str(req.get("name") or ""), str(req.get("sched") or "credit"), cpus)
        hostd.xen_log(f"cpupool {p.name} (id {p.poolid}) created: {p.sched}, cpus "
                      f"{cpulist.fmt(p.cpus) if p.cpus else 'none'}")
        return {"poolid": p.poolid}
    if op == "cpupool_destroy":
        p = st.pools.find(req.get("pool"))
        st.pools.destroy(p, st.ndomains(p))
        return {}
    if op == "cpupool_rename":
        st.pools.rename(st.pools.find(req.get("pool")), str(req.get("name") or ""))
        return {}
    if op in ("cpupool_cpu_add", "cpupool_cpu_remove"):
        p = st.pools.find(req.get("pool"))
        cpus = _cpus_arg(st, req)
        if op == "cpupool_cpu_add":
            st.pools.cpu_add(p, cpus)
        else:
            st.pools.cpu_remove(p, cpus, st.ndomains(p) - (1 if p.poolid == 0 else 0))
        await _repool(hostd, st, p)
        return {}
    dom = hostd.find(req.get("domain"))
    ds = st.doms.get(dom.domid)
    if ds is None:
        raise PoolError(f"domain {dom.domid} has no scheduling state (still building?)")
    if op == "sched_set":
        weight, cap = _opt_int(req, "weight"), _opt_int(req, "cap")
        if weight is not None:
            check_weight(weight)
        if cap is not None:
            check_cap(cap, dom.config.maxvcpus)
        if st.cg is None and (weight is not None or cap is not None):
            raise PoolError("no usable cgroups on this host: weights and caps cannot be "
                            "enforced")
        if st.cg is not None:
            if weight is not None:
                st.cg.set_weight(dom.domid, weight)
            if cap is not None:
                st.cg.set_cap(dom.domid, cap)
        ds.weight = ds.weight if weight is None else weight
        ds.cap = ds.cap if cap is None else cap
        return {}
    if op == "cpupool_migrate":
        p = st.pools.find(req.get("pool"))
        if not p.cpus:
            raise PoolError(f"cpupool {p.name} has no CPUs: no domain can run in it")
        old = ds.poolid
        ds.poolid = p.poolid
        try:
            await _apply_domain_pool(hostd, st, dom, ds, p)
        except BaseException:
            ds.poolid = old
            raise
        hostd.xen_log(f"d{dom.domid} moved to cpupool {p.name}")
        return {}
    if op == "vcpu_pin":
        return await _vcpu_pin(hostd, st, dom, ds, req)
    if op == "vcpu_set":
        return await _vcpu_set(hostd, dom, req)
    raise PoolError(f"unknown request {op!r}")


def _opt_int(req: dict[str, Any], key: str) -> int | None:
    v = req.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise PoolError(f"{key} must be a number")
    return v


async def _apply_domain_pool(hostd: Any, st: SchedState, dom: Any, ds: DomSched,
                             p: Pool) -> None:
    # widen first: the new cpuset, then the threads' masks within it
    if st.cg is not None:
        st.cg.set_cpus(dom.domid, p.cpus)
    await _apply_affinity(hostd, dom, ds, p, break_ok=True)


async def _repool(hostd: Any, st: SchedState, p: Pool) -> None:
    for domid, ds in list(st.doms.items()):
        if ds.poolid == p.poolid and domid in hostd.domains:
            await _apply_domain_pool(hostd, st, hostd.domains[domid], ds, p)


async def _vcpu_pin(hostd: Any, st: SchedState, dom: Any, ds: DomSched,
                    req: dict[str, Any]) -> dict[str, Any]:
    which = req.get("vcpu")
    n = len(ds.hard)
    if str(which) == "all":
        vcpus = list(range(n))
    else:
        try:
            v = int(str(which))
        except ValueError:
            raise PoolError(f"Invalid vCPU: {which}") from None
        if not 0 <= v < n:
            raise PoolError(f"vcpu {v} does not exist (domain {dom.domid} has {n} vCPUs)")
        vcpus = [v]

    def spec(key: str) -> set[int] | None:
        text = req.get(key)
        if text is None or text == "-":
            return None
        return cpulist.parse(str(text), st.topo)

    hard, soft = spec("hard"), spec("soft")
    pool = st.pools.pools[ds.poolid]
    if hard is not None and not hard & pool.cpus:
        raise PoolError(f"Setting vcpu affinity: CPUs {cpulist.fmt(hard)} are not in "
                        f"cpupool {pool.name} ({cpulist.fmt(pool.cpus)})")
    for i in vcpus:
        if hard is not None:
            ds.hard[i] = set(hard)
        if soft is not None:
            ds.soft[i] = set(soft)
    if hard is not None:
        await _apply_affinity(hostd, dom, ds, pool, vcpus)
    return {}


async def _vcpu_set(hostd: Any, dom: Any, req: dict[str, Any]) -> dict[str, Any]:
    """libxl_set_vcpuonline for a PVH guest: cpu/N/availability in xenstore; the guest
    brings vCPUs up and down itself (VCPUOP_up/down)."""
    count = _opt_int(req, "count")
    maxv = dom.config.maxvcpus
    if count is None or count < 1:
        raise PoolError("Error: Invalid argument.")
    if count > maxv:
        raise PoolError(f"Requested {count} VCPUs, however maxcpus is {maxv}!")
    if hostd.xs is None:
        raise PoolError("xenstored is not running: cannot write cpu/N/availability")
    from . import xsdomain
    dp = xsdomain.dom_path(dom.domid)
    loop = asyncio.get_running_loop()

    def write() -> None:
        for i in range(maxv):
            hostd.xs.write(f"{dp}/cpu/{i}/availability", "online" if i < count else "offline")

    await loop.run_in_executor(None, write)
    hostd.xen_log(f"d{dom.domid}: vcpu-set {count} (of {maxv})")
    return {}


async def vcpu_list(hostd: Any, wanted: list[Any] | None) -> list[dict[str, Any]]:
    st = state(hostd)
    if wanted:
        doms = [hostd.find(w) for w in wanted]
    else:
        doms = sorted(hostd.domains.values(), key=lambda d: d.domid)
    rows = []
    for dom in doms:
        ds = st.doms.get(dom.domid)
        if ds is None or dom.ctl is None or dom.destroying:
            continue
        try:
            info = await hostd._vmm(dom, "vcpu_info")
        except Exception:  # noqa: BLE001 - a domain going away is left out
            continue
        for v in info.get("vcpus", []):
            i = v.get("vcpu", 0)
            rows.append({"name": dom.config.name, "domid": dom.domid, **v,
                         "hard": cpulist.fmt(ds.hard[i], st.topo) if i < len(ds.hard) else "all",
                         "soft": cpulist.fmt(ds.soft[i], st.topo) if i < len(ds.soft) else "all",
                         "paused": dom.state == "paused"})
    return rows
