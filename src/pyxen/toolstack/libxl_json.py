"""libxl's domain_config JSON (tools/libs/light/libxl_types.idl), to and from DomainConfig.

This is what Xen 4.17's ``xl create -n`` and ``xl list -l`` print and what ``xl save``
puts in the save-file header, so the schema is libxl's: ``c_info`` (create info),
``b_info`` (build info), ``disks``, ``nics``, ``on_*`` actions. As libxl's generator
(gentypes.py) does, fields at their default are left out but aggregates are always
written (``sched_params``, ``arch_x86``, the keyed union as ``"type.pvh": {}``); enums are libxl's names ("restart_rename",
"qdisk"), bitmaps are lists of the set bits, defbools are "True"/"False".

Where xl resolves a setting at parse time, so does this: ``cpus="all"`` or
``cpus="nodes:0"`` become the host CPUs they name (vcpu_hard_affinity), as a save image
carries them. Reading back gives a validated DomainConfig; a configuration pyxen cannot
run (a PV or HVM domain from a real Xen host, say) is a ConfigError.
"""

from __future__ import annotations

from typing import Any

from . import cpulist
from .config import DEFAULT_MEMORY_MIB, ConfigError, DomainConfig

# DomainConfig action -> libxl_action_on_shutdown
ACTION_TO_LIBXL = {"destroy": "destroy", "restart": "restart",
                   "rename-restart": "restart_rename", "preserve": "preserve"}
ACTION_FROM_LIBXL = {v: k for k, v in ACTION_TO_LIBXL.items()}
LIBXL_ACTIONS = (*ACTION_FROM_LIBXL, "coredump_destroy", "coredump_restart", "soft_reset")

NICTYPE_TO_LIBXL = {"vif": "vif", "ioemu": "vif_ioemu"}
NICTYPE_FROM_LIBXL = {v: k for k, v in NICTYPE_TO_LIBXL.items()}

# DiskSpec field -> libxl_device_disk field (readwrite/is_cdrom/removable are integers)
DISK_FIELDS = {"target": "pdev_path", "vdev": "vdev", "backend": "backend_domname",
               "backendtype": "backend", "format": "format", "script": "script",
               "specification": "specification"}
DISK_INTS = ("removable", "readwrite", "is_cdrom")
# DiskSpec.extra (xl-disk-configuration keys kept, unused) -> libxl_device_disk field
DISK_EXTRA = {"colo-host": "colo_host", "colo-port": "colo_port",
              "colo-export": "colo_export", "active-disk": "active_disk",
              "hidden-disk": "hidden_disk", "grant_usage": "grant_usage"}
# NicSpec field -> libxl_device_nic field
NIC_FIELDS = {"devid": "devid", "mtu": "mtu", "model": "model", "mac": "mac", "ip": "ip",
              "bridge": "bridge", "vifname": "ifname", "script": "script",
              "backend": "backend_domname", "gatewaydev": "gatewaydev",
              "rate_bytes_per_interval": "rate_bytes_per_interval",
              "rate_interval_usecs": "rate_interval_usecs"}


def _defbool(v: bool) -> str:
    return "True" if v else "False"


def _from_defbool(v: Any) -> bool | None:
    if v in ("True", True):
        return True
    if v in ("False", False):
        return False
    return None  # "<default>"


def _affinity_json(spec: str | list[str] | None, n: int,
                   topo: cpulist.Topology) -> list[list[int]] | None:
    """cpus= / cpus_soft= as vcpu_hard_affinity / vcpu_soft_affinity: one bitmap per
    vCPU (a list names the first vCPUs; the others get every CPU, as xl gives them)."""
    if spec is None:
        return None
    try:
        if isinstance(spec, str):
            cpus = sorted(cpulist.parse(spec, topo))
            return [list(cpus) for _ in range(n)]
        return [sorted(cpulist.parse(spec[i], topo)) if i < len(spec) else sorted(topo.all)
                for i in range(n)]
    except cpulist.CpuListError as e:
        raise ConfigError(f"cpus: {e}") from None


def _affinity_cfg(maps: Any, key: str, topo: cpulist.Topology) -> str | list[str] | None:
    if maps is None:
        return None
    if not isinstance(maps, list) or not all(_is_bitmap(m) for m in maps):
        raise ConfigError(f"b_info.{key} must be a list of CPU bitmaps")
    if not maps:
        return None
    texts = [cpulist.fmt(m, topo) for m in maps]
    return texts[0] if len(set(texts)) == 1 else texts


def _is_bitmap(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                       and x >= 0 for x in v)


def _disk_json(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ours, theirs in DISK_FIELDS.items():
        if d.get(ours) is not None:
            out[theirs] = d[ours]
    for key in DISK_INTS:
        if d.get(key):
            out[key] = 1
    if d.get("direct_io_safe"):
        out["direct_io_safe"] = True
    if d.get("discard") is not None:
        out["discard_enable"] = _defbool(d["discard"])
    if d.get("trusted") is not None:
        out["trusted"] = _defbool(d["trusted"])
    for k, v in (d.get("extra") or {}).items():
        if k == "colo-port" and str(v).isdigit():
            out["colo_port"] = int(v)
        elif k == "grant_usage":
            out["grant_usage"] = _defbool(v == "1")
        elif k in DISK_EXTRA:
            out[DISK_EXTRA[k]] = v
    return out


def _disk_cfg(j: Any) -> dict[str, Any]:
    if not isinstance(j, dict):
        raise ConfigError("disks: each disk must be a JSON object")
    d: dict[str, Any] = {ours: _str(j, theirs, "disks[]")
                         for ours, theirs in DISK_FIELDS.items()}
    if not d["vdev"]:
        raise ConfigError("disks[]: a disk without a vdev")
    for key in DISK_INTS:
        if not isinstance(j.get(key, 0), int):
            raise ConfigError(f"disks[].{key} must be a number")
        d[key] = bool(j.get(key, 0))
    if not isinstance(j.get("direct_io_safe", False), bool):
        raise ConfigError("disks[].direct_io_safe must be true or false")
    d["direct_io_safe"] = j.get("direct_io_safe", False)
    d["discard"] = _from_defbool(j.get("discard_enable"))
    d["trusted"] = _from_defbool(j.get("trusted"))
    extra: dict[str, str] = {}
    for ours, theirs in DISK_EXTRA.items():
        v = j.get(theirs)
        if ours == "grant_usage":
            if _from_defbool(v) is not None:
                extra[ours] = "1" if _from_defbool(v) else "0"
        elif isinstance(v, str | int) and not isinstance(v, bool) and v not in ("", 0):
            extra[ours] = str(v)
    d["extra"] = extra
    return d


def _nic_json(v: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ours, theirs in NIC_FIELDS.items():
        if v.get(ours) is not None:
            out[theirs] = v[ours]
    if v.get("type") is not None:
        out["nictype"] = NICTYPE_TO_LIBXL.get(v["type"], v["type"])
    return out


def _nic_cfg(j: Any) -> dict[str, Any]:
    if not isinstance(j, dict):
        raise ConfigError("nics: each nic must be a JSON object")
    v = {ours: j[theirs] for ours, theirs in NIC_FIELDS.items() if j.get(theirs) is not None}
    if j.get("nictype") is not None:
        v["type"] = NICTYPE_FROM_LIBXL.get(j["nictype"], j["nictype"])
    return v


def to_libxl_json(cfg: DomainConfig, topo: cpulist.Topology | None = None) -> dict[str, Any]:
    """The libxl_domain_config of a DomainConfig (``topo``: the host's CPUs, for cpus=)."""
    topo = topo or cpulist.Topology.from_sysfs()
    c_info: dict[str, Any] = {"type": cfg.type, "name": cfg.name, "uuid": cfg.uuid}
    if cfg.pool is not None:
        c_info["pool_name"] = cfg.pool
    b_info: dict[str, Any] = {
        "max_vcpus": cfg.maxvcpus,
        "avail_vcpus": list(range(cfg.vcpus)),
    }
    if cfg.numa_nodes:
        b_info["nodemap"] = sorted(cfg.numa_nodes)
    hard = _affinity_json(cfg.cpus, cfg.maxvcpus, topo)
    if hard is not None:
        b_info["vcpu_hard_affinity"] = hard
    soft = _affinity_json(cfg.cpus_soft, cfg.maxvcpus, topo)
    if soft is not None:
        b_info["vcpu_soft_affinity"] = soft
    b_info["max_memkb"] = cfg.maxmem * 1024
    b_info["target_memkb"] = cfg.memory * 1024
    if cfg.vnuma:
        b_info["vnuma_nodes"] = [
            {"memkb": int(n.get("size", 0)) * 1024, "distances": list(n.get("vdistances", [])),
             "pnode": int(n.get("pnode", 0)), "vcpus": sorted(n.get("vcpus", []))}
            for n in cfg.vnuma]
    b_info["sched_params"] = {"weight": cfg.cpu_weight, "cap": cfg.cap}
    if cfg.kernel is not None:
        b_info["kernel"] = cfg.kernel
    if cfg.cmdline:
        b_info["cmdline"] = cfg.cmdline
    if cfg.ramdisk is not None:
        b_info["ramdisk"] = cfg.ramdisk
    b_info[f"type.{cfg.type}"] = {}  # the keyed union u, keyed by type (gentypes.py)
    b_info["arch_arm"] = {}  # aggregates: libxl always generates them, defaults left out
    b_info["arch_x86"] = {}
    out: dict[str, Any] = {"c_info": c_info, "b_info": b_info}
    if cfg.disks:
        out["disks"] = [_disk_json(d) for d in cfg.disks]
    if cfg.vifs:
        out["nics"] = [_nic_json(v) for v in cfg.vifs]
    out["on_poweroff"] = ACTION_TO_LIBXL[cfg.on_poweroff]
    out["on_reboot"] = ACTION_TO_LIBXL[cfg.on_reboot]
    out["on_watchdog"] = ACTION_TO_LIBXL[cfg.on_watchdog]
    out["on_crash"] = ACTION_TO_LIBXL[cfg.on_crash]
    out["on_soft_reset"] = "soft_reset"
    return out


def _int(d: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{where}.{key} must be a number" if key in d
                          else f"{where}.{key} is missing")
    return v


def _str(d: dict[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"{where}.{key} must be a string")
    return v


def from_libxl_json(d: Any, topo: cpulist.Topology | None = None) -> DomainConfig:
    """A validated DomainConfig from libxl_domain_config JSON (ConfigError if it is not
    one, or describes a domain pyxen cannot run). The document comes from a save image or
    a migration stream: untrusted, so any malformed value is a ConfigError too."""
    topo = topo or cpulist.Topology.from_sysfs()
    try:
        return _from_libxl_json(d, topo)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError,
            OverflowError) as e:  # a value of a shape the checks above did not foresee
        raise ConfigError(f"malformed domain configuration: {e}") from None


def _vnode(n: Any, i: int) -> dict[str, Any]:
    where = f"b_info.vnuma_nodes[{i}]"
    if not isinstance(n, dict):
        raise ConfigError(f"{where} must be a JSON object")
    vcpus, dist = n.get("vcpus", []), n.get("distances", [])
    if not _is_bitmap(vcpus) or not _is_bitmap(dist):
        raise ConfigError(f"{where}: vcpus and distances must be lists of numbers")
    return {"pnode": _int(n, "pnode", where, 0), "size": _int(n, "memkb", where, 0) // 1024,
            "vcpus": sorted(vcpus), "vdistances": list(dist)}


def _from_libxl_json(d: Any, topo: cpulist.Topology) -> DomainConfig:
    if not isinstance(d, dict):
        raise ConfigError("the domain configuration is not a JSON object")
    c_info, b_info = d.get("c_info"), d.get("b_info")
    if not isinstance(c_info, dict) or not isinstance(b_info, dict):
        raise ConfigError("the domain configuration has no c_info/b_info: not libxl's "
                          "domain_config JSON")
    dtype = _str(c_info, "type", "c_info") or "pv"  # "pv": libxl's default... pyxen refuses
    name = _str(c_info, "name", "c_info")
    if name is None:
        raise ConfigError("c_info.name is missing: Domain name must be specified.")
    uuid = _str(c_info, "uuid", "c_info") or ""
    max_memkb = _int(b_info, "max_memkb", "b_info", DEFAULT_MEMORY_MIB * 1024)
    target_memkb = _int(b_info, "target_memkb", "b_info", max_memkb)
    maxvcpus = _int(b_info, "max_vcpus", "b_info", 1)
    avail = b_info.get("avail_vcpus", list(range(maxvcpus)))
    if not _is_bitmap(avail):
        raise ConfigError("b_info.avail_vcpus must be a bitmap (a list of vCPU numbers)")
    if sorted(avail) != list(range(len(avail))):
        raise ConfigError(f"b_info.avail_vcpus {sorted(avail)}: pyxen starts vCPUs "
                          "0..N-1 (a gap is not supported)")
    sched = b_info.get("sched_params", {})
    if not isinstance(sched, dict):
        raise ConfigError("b_info.sched_params must be a JSON object")
    weight = sched.get("weight", 256)
    cap = sched.get("cap", 0)
    weight = 256 if weight == -1 else weight  # libxl's "default" marker
    cap = 0 if cap == -1 else cap
    vnuma = []
    vnodes = b_info.get("vnuma_nodes", [])
    if not isinstance(vnodes, list):
        raise ConfigError("b_info.vnuma_nodes must be a list")
    for i, n in enumerate(vnodes):
        vnuma.append(_vnode(n, i))
    nodemap = b_info.get("nodemap", [])
    actions = {}
    for key, default in (("on_poweroff", "destroy"), ("on_reboot", "restart"),
                         ("on_watchdog", "destroy"), ("on_crash", "destroy")):
        v = d.get(key, default)
        if v not in LIBXL_ACTIONS:
            raise ConfigError(f'Unknown {key} action "{v}" specified')
        if v not in ACTION_FROM_LIBXL:
            raise ConfigError(f'{key}="{v}" is not supported by pyxen')
        actions[key] = ACTION_FROM_LIBXL[v]
    disks, nics = d.get("disks", []), d.get("nics", [])
    if not isinstance(disks, list) or not isinstance(nics, list):
        raise ConfigError("disks and nics must be lists")
    cfg = DomainConfig(
        name=name, uuid=uuid, type=dtype,
        memory=-(-target_memkb // 1024), maxmem=-(-max_memkb // 1024),
        vcpus=len(avail), maxvcpus=maxvcpus,
        kernel=_str(b_info, "kernel", "b_info"), ramdisk=_str(b_info, "ramdisk", "b_info"),
        cmdline=_str(b_info, "cmdline", "b_info") or "",
        disks=[_disk_cfg(x) for x in disks], vifs=[_nic_cfg(x) for x in nics],
        cpu_weight=weight, cap=cap,
        cpus=_affinity_cfg(b_info.get("vcpu_hard_affinity"), "vcpu_hard_affinity", topo),
        cpus_soft=_affinity_cfg(b_info.get("vcpu_soft_affinity"), "vcpu_soft_affinity",
                                topo),
        pool=_str(c_info, "pool_name", "c_info"),
        numa_nodes=sorted(nodemap) if _is_bitmap(nodemap) else [],
        vnuma=vnuma, **actions)
    cfg.validate()
    return cfg


def dumps(cfg: DomainConfig) -> str:
    """As libxl_domain_config_to_json prints it (4-space indent)."""
    import json
    return json.dumps(to_libxl_json(cfg), indent=4)


def config_json(config: dict[str, Any]) -> dict[str, Any]:
    """``xl list -l``'s "config" for a domain whose DomainConfig.to_json() hostd sent."""
    try:
        return to_libxl_json(DomainConfig.from_json(config))
    except ConfigError:
        return config  # hostd validated it when the domain was made: not expected
