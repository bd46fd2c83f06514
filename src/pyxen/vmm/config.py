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
        cfg = json.loads(Path(path).read_text())
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
    return VmmConfig(
        name=str(cfg.get("name") or "domain"), uuid=cfg.get("uuid"), type=dtype,
        memory_mib=memory, maxmem_mib=maxmem, vcpus=vcpus, max_vcpus=max_vcpus,
        kernel=kernel, ramdisk=ramdisk, cmdline=str(cfg.get("cmdline") or ""),
        numa_nodes=tuple(nodes),
    )
