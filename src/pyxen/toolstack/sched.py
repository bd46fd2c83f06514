"""Credit-scheduler policy of a domain: xl.cfg's ``cpu_weight``, ``cap``, ``cpus``,
``cpus_soft`` and ``pool``, checked as xl and libxl check them, and xl's output lines
for ``xl sched-credit``/``sched-credit2``/``vcpu-list``/``cpupool-list``."""

from __future__ import annotations

from .xlcfg import XlCfgError, XlConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_WEIGHT = 256


def _affinity(cfg: XlConfig, key: str) -> str | list[str] | None:
    s = cfg.find(key)
    if s is None:
        return None
    if isinstance(s.value, list):
        if not all(isinstance(v, str) for v in s.value):
            raise cfg.error(key, f"{key}: each entry of the list must be a string")
        return [str(v) for v in s.value]
    return str(s.value)


def from_xlconfig(cfg: XlConfig, maxvcpus: int) -> dict[str, Any]:
    """The scheduling keys of DomainConfig from an xl.cfg."""
    out: dict[str, Any] = {}
    weight = cfg.get_long("cpu_weight")
    cap = cfg.get_long("cap")
    if weight is not None or cap is not None:  # cpupool (and its imports) only then
        from .cpupool import PoolError, check_cap, check_weight
        try:
            if weight is not None:
                check_weight(weight)
                out["cpu_weight"] = weight
            if cap is not None:
                check_cap(cap, maxvcpus)
                out["cap"] = cap
        except PoolError as e:
            raise cfg.error("cpu_weight" if weight is not None and not 1 <= weight <= 65535
                            else "cap", str(e)) from None
    for key in ("cpus", "cpus_soft"):
        val = _affinity(cfg, key)
        if val is not None:
            out[key] = val
    pool = cfg.get_string("pool")
    if pool is not None:
        out["pool"] = pool
    return out


def validate(c: Any) -> str | None:
    """DomainConfig's scheduling fields from a client: an error line, or None."""
    if not isinstance(c.cpu_weight, int) or not 1 <= c.cpu_weight <= 65535:
        return "Cpu weight out of range, valid values are within range from 1 to 65535"
    if not isinstance(c.cap, int) or not 0 <= c.cap <= c.maxvcpus * 100:
        return (f"Cpu cap out of range, valid range is from 0 to {c.maxvcpus * 100} for "
                "specified number of vcpus")
    for key in ("cpus", "cpus_soft"):
        v = getattr(c, key)
        if v is not None and not isinstance(v, str) and not (
                isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return f"{key} must be a cpu-list string or a list of them"
    if c.pool is not None and not isinstance(c.pool, str):
        return "pool must be a string"
    return None


__all__ = ["DEFAULT_WEIGHT", "XlCfgError", "from_xlconfig", "validate"]
