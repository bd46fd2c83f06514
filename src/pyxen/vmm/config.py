"""The part of the domain configuration (config.json, as `xl create -n` prints it) that the
VMM reads, validated into one-line errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    pass


@dataclass
class VmmConfig:
    name: str
    uuid: str | None
    type: str
    memory_mib: int
    maxmem_mib: int
    vcpus: int
    max_vcpus: int
    kernel: str
    ramdisk: str | None
    cmdline: str
    numa_nodes: tuple[int, ...] = ()  # hostd's placement: bind guest RAM there
    vnuma: object = None  # hypervisor.vnuma.VNuma (xl.cfg vnuma=)


def _int(cfg: dict, key: str, default: int | None = None) -> int:
    v = cfg.get(key)
    if v is None:
        if default is None:
            raise ConfigError(f"domain config has no '{key}'")
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"'{key}' must be an integer, not {v!r}")
    return v


def load_config(path: str | Path) -> VmmConfig:
    try:
        with open(path, "rb") as f:  # not pathlib: its first use copies pages of a forked VMM
            cfg = json.loads(f.read())
    except FileNotFoundError:
        raise ConfigError(f"domain config {path} not found") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read domain config {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"domain config {path} is not a JSON object")
    dtype = cfg.get("type") or "pvh"
    if dtype != "pvh":
        raise ConfigError(f"type '{dtype}' is not supported yet: use type = \"pvh\"")
    memory = _int(cfg, "memory")
    maxmem = _int(cfg, "maxmem", memory)
    vcpus = _int(cfg, "vcpus", 1)
    max_vcpus = _int(cfg, "maxvcpus", vcpus)
    if memory < 1:
        raise ConfigError(f"memory = {memory} MiB: a domain needs at least 1 MiB")
    if maxmem < memory:
        raise ConfigError(f"maxmem ({maxmem} MiB) is smaller than memory ({memory} MiB)")
    if not 1 <= vcpus <= 128:
        raise ConfigError(f"vcpus = {vcpus}: use 1 to 128")
    if max_vcpus < vcpus or max_vcpus > 128:
        raise ConfigError(f"maxvcpus = {max_vcpus}: use vcpus ({vcpus}) to 128")
    kernel = cfg.get("kernel")
    if not kernel or not isinstance(kernel, str):
        raise ConfigError("domain config has no 'kernel': name the PVH kernel to boot")
    ramdisk = cfg.get("ramdisk") or None
    nodes = cfg.get("numa_nodes") or []
    if not isinstance(nodes, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1024 for n in nodes):
        raise ConfigError(f"'numa_nodes' must be a list of node numbers, not {nodes!r}")
    vnuma = _vnuma(cfg.get("vnuma"), maxmem, max_vcpus)
    return VmmConfig(
        name=str(cfg.get("name") or "domain"), uuid=cfg.get("uuid"), type=dtype,
        memory_mib=memory, maxmem_mib=maxmem, vcpus=vcpus, max_vcpus=max_vcpus,
        kernel=kernel, ramdisk=ramdisk, cmdline=str(cfg.get("cmdline") or ""),
        numa_nodes=tuple(nodes), vnuma=vnuma,
    )


def _vnuma(spec, maxmem: int, max_vcpus: int):
    """config.json's vnuma: [{"pnode", "size" (MiB), "vcpus": [...], "vdistances": [...]}]
    as toolstack/numa.py wrote it; checked again (the file is an input like any other)."""
    if not spec:
        return None
    from ..hypervisor.vnuma import build_vnuma

    def ints(v, what: str) -> list[int]:
        if not isinstance(v, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 16
                for x in v):
            raise ConfigError(f"vnuma: {what} must be a list of small integers, not {v!r}")
        return v

    if not isinstance(spec, list) or not all(isinstance(n, dict) for n in spec):
        raise ConfigError("'vnuma' must be a list of vnodes")
    n = len(spec)
    sizes = [ints([node.get("size")], "size")[0] for node in spec]
    if sum(sizes) != maxmem or 0 in sizes:
        raise ConfigError(f"vnuma: the vnodes' sizes ({sum(sizes)} MiB) must add up to "
                          f"maxmem ({maxmem} MiB), none of them 0")
    dist = [ints(node.get("vdistances"), "vdistances") for node in spec]
    if any(len(row) != n for row in dist):
        raise ConfigError(f"vnuma: each vnode needs {n} vdistances")
    owner = [-1] * max_vcpus
    for i, node in enumerate(spec):
        for c in ints(node.get("vcpus"), "vcpus"):
            if c >= max_vcpus or owner[c] != -1:
                raise ConfigError(f"vnuma: vcpu {c} is out of range or in two vnodes")
            owner[c] = i
    if -1 in owner:
        raise ConfigError(f"vnuma: vcpu {owner.index(-1)} is in no vnode")
    pnodes = ints([node.get("pnode", 0) for node in spec], "pnode")
    return build_vnuma([s << 20 for s in sizes], dist, owner, pnodes)
