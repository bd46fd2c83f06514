"""The VMM's side of vCPU placement: each vCPU is a host thread, so hard affinity is that
thread's CPU mask (os.sched_setaffinity on its native thread id) and ``xl vcpu-list``
reads the thread's state from /proc. Never-started vCPUs have parked threads that cost
nothing."""

from __future__ import annotations

import os
from typing import Any


def _native_ids(domain: Any) -> list[int | None]:
    m = domain.platform
    watches = getattr(m, "watches", None) or []
    return [getattr(w, "native_id", None) for w in watches] + \
        [None] * (len(domain.vcpus) - len(watches))


def _last_cpu(tid: int) -> int | None:
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2:].split()[36])  # field 39: processor
    except (OSError, ValueError, IndexError):
        return None


def vcpu_info(domain: Any) -> list[dict[str, Any]]:
    out = []
    for v, tid in zip(domain.vcpus, _native_ids(domain), strict=False):
        aff: list[int] = []
        cpu = None
        if tid is not None:
            try:
                aff = sorted(os.sched_getaffinity(tid))
            except OSError:
                pass
            cpu = _last_cpu(tid)
        t = v.cpu_time
        if v.thread_ident is not None:
            try:
                import time
                t += time.clock_gettime(time.pthread_getcpuclockid(v.thread_ident))
            except (OSError, ProcessLookupError):
                pass
        out.append({"vcpu": v.id, "online": v.online, "blocked": v.blocked,
                    "running": v.online and not v.blocked and not domain.pause_count,
                    "cpu": cpu, "cpu_time": round(t, 6), "tid": tid, "affinity": aff})
    return out


def set_affinity(domain: Any, vcpu: Any, cpus: Any) -> None:
    """Pin vCPU ``vcpu`` (an index, or None for all) to host CPUs ``cpus``."""
    if not isinstance(cpus, list) or not cpus or \
            not all(isinstance(c, int) and 0 <= c < 4096 for c in cpus):
        raise ValueError("vcpu_affinity needs a non-empty list of CPU numbers")
    ids = _native_ids(domain)
    targets = range(len(ids)) if vcpu is None else [vcpu]
    for i in targets:
        if not isinstance(i, int) or not 0 <= i < len(ids):
            raise ValueError(f"no vCPU {i}")
        if ids[i] is not None:
            os.sched_setaffinity(ids[i], set(cpus))
