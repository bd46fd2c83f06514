"""The domain configuration: xl.cfg settings turned into a typed DomainConfig.

Follows xl's parse_config_data() (tools/xl/xl_parse.c) and libxl's defaults: a missing
``type`` means PV (pyxen refuses it, naming what it supports), memory defaults to 32 MiB
and maxmem to memory, vcpus to 1 and maxvcpus to vcpus, ``cmdline`` wins over
``root``/``extra``. Keys pyxen does not act on are reported (xlcfg_keys.py). Relative kernel and
ramdisk paths are relative to xl's working directory, as libxl opens them.
"""

from __future__ import annotations

import os

from pyxen.record import asdict, dataclass, field
from pyxen.toolstack.vifspec import NicSpec, VifSpecError, assign_devids, parse_vif
from pyxen.toolstack.xlcfg import XlCfgError, XlConfig, apply_override, parse_file
from pyxen.toolstack.xldisk import DiskSpec, DiskSpecError, parse_disk

TYPE_CHECKING = False
if TYPE_CHECKING:  # `xl create` imports this module: typing, pathlib, uuid, json cost
    from collections.abc import Callable  # milliseconds there (docs/xl.md)
    from pathlib import Path
    from typing import Any

SUPPORTED_TYPES = ("pvh",)
KNOWN_TYPES = ("pv", "pvh", "hvm")

# xl.cfg(5) actions on domain shutdown; pyxen implements the first four.
ACTIONS = ("destroy", "restart", "rename-restart", "preserve")
UNSUPPORTED_ACTIONS = {
    "coredump-destroy": "core dumps are not implemented",
    "coredump-restart": "core dumps are not implemented",
    "soft-reset": "soft reset is not implemented",
}
ACTION_DEFAULTS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "destroy",
                   "on_watchdog": "destroy", "on_soft_reset": "soft-reset"}

MAX_VCPUS = 128
DEFAULT_MEMORY_MIB = 32  # libxl__domain_build_info_setdefault: max_memkb = 32 * 1024


class ConfigError(Exception):
    """A configuration problem, worded as one line for the user."""


@dataclass
class DomainConfig:
    """What a domain is built from: ``to_json()`` is config.json for the VMM (see
    docs/internals.md); the ``on_*`` keys are hostd's."""

    name: str
    uuid: str
    type: str
    memory: int  # MiB
    maxmem: int  # MiB
    vcpus: int
    maxvcpus: int
    kernel: str | None
    ramdisk: str | None
    cmdline: str
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    disks: list[dict[str, Any]] = field(default_factory=list)  # DiskSpec.to_json() each
    vifs: list[dict[str, Any]] = field(default_factory=list)  # NicSpec.to_json() each
    # scheduling (toolstack/sched.py): credit weight and cap, affinities, cpupool
    cpu_weight: int = 256
    cap: int = 0
    cpus: str | list[str] | None = None
    cpus_soft: str | list[str] | None = None
    pool: str | None = None
    numa_nodes: list[int] = field(default_factory=list)  # hostd's NUMA placement (numa.py)
    vnuma: list[dict[str, Any]] = field(default_factory=list)  # vnodes (numa.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def dumps(self) -> str:
        import json
        return json.dumps(self.to_json(), indent=4)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainConfig:
        """Rebuild and re-validate a config sent by a client (hostd trusts no one)."""
        try:
            cfg = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as e:
            raise ConfigError(f"malformed domain configuration: {e}") from e
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not isinstance(self.name, str) or not valid_name(self.name):
            raise ConfigError(f"invalid domain name {self.name!r}")
        try:
            self.uuid = canonical_uuid(self.uuid)
        except (ValueError, TypeError, AttributeError) as e:
            raise ConfigError(f"Failed to parse UUID: {self.uuid}") from e
        if self.type not in SUPPORTED_TYPES:
            raise ConfigError(unsupported_type(self.type))
        for key in ("memory", "maxmem", "vcpus", "maxvcpus"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{key} must be a positive number")
        if self.maxmem < self.memory:
            raise ConfigError(f"maxmem ({self.maxmem} MiB) must be equal to or greater "
                              f"than memory ({self.memory} MiB)")
        if self.maxvcpus < self.vcpus:
            raise ConfigError(f"maxvcpus ({self.maxvcpus}) must be equal to or greater than "
                              f"vcpus ({self.vcpus})")
        if self.maxvcpus > MAX_VCPUS:
            raise ConfigError(f"maxvcpus ({self.maxvcpus}) is more than pyxen supports "
                              f"({MAX_VCPUS})")
        for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog"):
            if getattr(self, key) not in ACTIONS:
                raise ConfigError(f'Unknown {key} action "{getattr(self, key)}" specified')
        if not self.kernel:
            raise ConfigError("no kernel specified: a PVH domain needs kernel=\"...\"")
        for key in ("kernel", "ramdisk"):
            path = getattr(self, key)
            if path is not None and not os.path.isabs(path):
                raise ConfigError(f"{key} path must be absolute: {path}")
        if not isinstance(self.disks, list):
            raise ConfigError("disks must be a list")
        try:
            check_disks([DiskSpec.from_json(d) for d in self.disks])
        except DiskSpecError as e:
            raise ConfigError(str(e)) from None

        from .sched import validate as sched_validate
        if (err := sched_validate(self)) is not None:
            raise ConfigError(err)
        if not isinstance(self.vnuma, list) or not all(isinstance(v, dict)
                                                       for v in self.vnuma):
            raise ConfigError("vnuma must be a list of vnodes")  # the VMM checks the rest
        if not isinstance(self.vifs, list):
            raise ConfigError("vifs must be a list")
        try:
            specs = self.nic_specs()
            if len({s.devid for s in specs}) != len(specs) or \
                    any(s.devid is None for s in specs):
                raise VifSpecError("vifs need distinct devids")
        except VifSpecError as e:
            raise ConfigError(str(e)) from None

    def disk_specs(self) -> list[DiskSpec]:
        return [DiskSpec.from_json(d) for d in self.disks]

    def nic_specs(self) -> list[NicSpec]:
        return [NicSpec.from_json(v) for v in self.vifs]

    def check_files(self) -> None:
        """The kernel and ramdisk exist and are readable (libxl fails here at build)."""
        for key in ("kernel", "ramdisk"):
            path = getattr(self, key)
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ConfigError(f"failed to open {key} '{path}': {e.strerror}") from e
            if not os.path.isfile(path):
                raise ConfigError(f"failed to open {key} '{path}': not a regular file")
        for disk in self.disk_specs():
            try:
                check_disk_target(disk)
            except DiskSpecError as e:
                raise ConfigError(str(e)) from None


def check_disks(disks: list[DiskSpec], existing: list[DiskSpec] = ()) -> None:  # type: ignore[assignment]
    """What libxl refuses before creating any device: a vdev without a Xen device
    number, the same device twice, a backend pyxen does not have."""
    seen = {d.devid: d.vdev for d in existing}
    for d in disks:
        check_disk_backend(d)
        devid = d.devid
        if devid in seen:
            raise DiskSpecError(f"Duplicate vdev {d.vdev} (device {devid}) for the domain"
                                if seen[devid] == d.vdev else
                                f"vdev {d.vdev} is the same device ({devid}) as {seen[devid]}")
        seen[devid] = d.vdev


def check_disk_backend(d: DiskSpec) -> None:
    """pyxen's blkback (in the domain's VMM) serves raw images and block devices in dom0."""
    if d.backend not in (None, "", "0", "Domain-0"):
        raise DiskSpecError(f"Disk vdev={d.vdev}: backend domain {d.backend} is not supported "
                            "by pyxen (driver domains): only dom0 serves disks")
    if d.backendtype not in (None, "phy", "qdisk"):
        raise DiskSpecError(f"Disk vdev={d.vdev}: backendtype={d.backendtype} is not "
                            "supported by pyxen: use phy or qdisk (both are pyxen's blkback)")
    if d.format not in ("raw", "empty"):
        raise DiskSpecError(f"Disk vdev={d.vdev}: format={d.format} is not supported by "
                            "pyxen's blkback: use format=raw (convert with qemu-img convert "
                            "-O raw)")
    if d.specification not in (None, "xen"):
        raise DiskSpecError(f"Disk vdev={d.vdev}: specification={d.specification} is not "
                            "supported by pyxen: only Xen PV disks")


def check_disk_target(d: DiskSpec) -> None:
    """libxl__device_disk_set_backend: the target must exist (stat), and be usable."""
    if not d.target:
        return  # an empty cdrom drive
    try:
        st = os.stat(d.target)
    except OSError as e:
        raise DiskSpecError(f"Disk vdev={d.vdev} failed to stat: {d.target}: "
                            f"{e.strerror}") from None
    import stat as statmod
    if not (statmod.S_ISREG(st.st_mode) or statmod.S_ISBLK(st.st_mode)):
        raise DiskSpecError(f"Disk vdev={d.vdev}: {d.target} is neither a regular file nor a "
                            "block device")
    if not os.access(d.target, os.R_OK | (os.W_OK if d.readwrite else 0)):
        raise DiskSpecError(f"Disk vdev={d.vdev}: {d.target}: permission denied "
                            f"({'read-write' if d.readwrite else 'read-only'} access)")


def canonical_uuid(text: str) -> str:
    """str(uuid.UUID(text)) without importing uuid (and platform): the forms it accepts
    ({...}, urn:uuid:, with or without hyphens), ValueError for others."""
    hexdigits = text.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    if len(hexdigits) != 32:
        raise ValueError("badly formed hexadecimal UUID string")
    value = int(hexdigits, 16)
    if not 0 <= value < 1 << 128:
        raise ValueError("int is out of range (need a 128-bit value)")
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_uuid() -> str:
    """str(uuid.uuid4()): 122 random bits, version 4, the RFC 4122 variant."""
    value = int.from_bytes(os.urandom(16), "big")
    value = (value & ~(0xc000 << 48)) | (0x8000 << 48)
    value = (value & ~(0xf000 << 64)) | (4 << 76)
    return canonical_uuid(f"{value:032x}")


def _norm(path: str) -> str:
    """str(pathlib.PurePosixPath(path)): repeated slashes and "." parts dropped, a
    trailing slash too; ".." kept; exactly two leading slashes kept."""
    lead = "//" if path.startswith("//") and not path.startswith("///") else \
        "/" if path.startswith("/") else ""
    parts = [p for p in path.split("/") if p and p != "."]
    return lead + "/".join(parts) if (lead or parts) else "."


def _join(base: str | Path, path: str) -> str:
    """str(Path(base) / path) for a relative ``path``."""
    b = _norm(os.fspath(base))
    return _norm(b + path if b in ("/", "//") else b + "/" + path)


def valid_name(name: str) -> bool:
    """Names xl accepts and xenstore can hold: non-empty, printable, not all digits (a
    name that is a number would be read as a domid), no '/'."""
    return (0 < len(name) <= 64 and name.isprintable() and "/" not in name
            and not name.isdigit() and not name[0].isspace())


def unsupported_type(t: str) -> str:
    if t in KNOWN_TYPES:
        return (f'domain type "{t}" is not supported by pyxen: only type="pvh" '
                '(a PVH kernel with a XEN_ELFNOTE_PHYS32_ENTRY note) is')
    return f"Invalid domain type {t}."


def _action(cfg: XlConfig, key: str) -> str:
    value = cfg.get_string(key)
    if value is None:
        return ACTION_DEFAULTS[key]
    if value in UNSUPPORTED_ACTIONS:
        raise cfg.error(key, f'{key}="{value}" is not supported by pyxen '
                        f"({UNSUPPORTED_ACTIONS[value]}); use one of: " + ", ".join(ACTIONS))
    if value not in ACTIONS:
        raise cfg.error(key, f'Unknown {key} action "{value}" specified')
    return value


def _domain_type(cfg: XlConfig) -> str:
    """type=, or the deprecated builder= and pvh= spellings, as xl_parse.c combines them."""
    dtype = cfg.get_string("type")
    if dtype is not None and dtype not in KNOWN_TYPES:
        raise cfg.error("type", f"Invalid domain type {dtype}.")
    builder = cfg.get_string("builder")
    if builder is not None:
        if builder not in ("generic", "linux", "hvm"):
            raise cfg.error("builder", f"Invalid domain type {builder}.")
        btype = "hvm" if builder == "hvm" else "pv"
        if dtype is not None and dtype != btype:
            raise cfg.error("builder",
                            'Contradicting "builder" and "type" options specified.')
        dtype = btype
    if "pvh" in cfg:
        pvh = cfg.get_long("pvh")
        if pvh:
            # Xen < 4.10 wrote builder="hvm" + pvh=1 (or just pvh=1) for PVH guests.
            if dtype not in (None, "pvh") and cfg.get_string("type") is not None:
                raise cfg.error("pvh", "Contradicting pvh and type options")
            dtype = "pvh"
        elif dtype == "pvh":
            raise cfg.error("pvh", "Contradicting pvh and type options")
    return dtype or "pv"


def _positive(cfg: XlConfig, key: str, default: int) -> int:
    value = cfg.get_long(key)
    if value is None:
        return default
    if value < 1:
        raise cfg.error(key, f"parameter `{key}' must be at least 1 (got {value})")
    return value


def _path(value: str | None, base: str | Path) -> str | None:
    if value is None or value == "":
        return None
    p = os.path.expanduser(value)
    return _norm(p) if p.startswith("/") else _join(base, _norm(p))


def from_xlconfig(cfg: XlConfig, cwd: Path | None = None,
                  warn: Callable[[str], None] | None = None) -> DomainConfig:
    """Turn parsed settings into a DomainConfig, raising XlCfgError at the offending key;
    ``warn`` gets one line per key pyxen does not act on (toolstack/xlcfg_keys.py)."""
    dc = _from_xlconfig(cfg, cwd or os.getcwd())
    if warn is not None:
        from .xlcfg_keys import warnings
        for line in warnings(cfg.keys()):
            warn(line)
    return dc


def _from_xlconfig(cfg: XlConfig, cwd: str | Path) -> DomainConfig:
    name = cfg.get_string("name")
    if name is None:
        raise XlCfgError(cfg.source, None, "Domain name must be specified.")
    if not valid_name(name):
        raise cfg.error("name", f"invalid domain name \"{name}\": a name is 1-64 printable "
                        "characters, no '/', not a number")

    dtype = _domain_type(cfg)
    if dtype not in SUPPORTED_TYPES:
        key = "type" if "type" in cfg else ("builder" if "builder" in cfg else None)
        msg = unsupported_type(dtype)
        if key is None:
            msg += '; the default when no type= is given is "pv": add type = "pvh"'
            raise XlCfgError(cfg.source, None, msg)
        raise cfg.error(key, msg)

    text = cfg.get_string("uuid")
    if text is None:
        uuid = random_uuid()
    else:
        try:
            uuid = canonical_uuid(text)
        except ValueError as e:
            raise cfg.error("uuid", f"Failed to parse UUID: {text}") from e

    memory = _positive(cfg, "memory", DEFAULT_MEMORY_MIB)
    maxmem = _positive(cfg, "maxmem", memory)
    if maxmem < memory:
        raise cfg.error("maxmem", f"maxmem={maxmem} must be equal to or greater than "
                        f"memory={memory}")
    vcpus = _positive(cfg, "vcpus", 1)
    maxvcpus = _positive(cfg, "maxvcpus", vcpus)
    if maxvcpus < vcpus:
        raise cfg.error("maxvcpus", f"maxvcpus={maxvcpus} must be equal to or greater than "
                        f"vcpus={vcpus}")
    if maxvcpus > MAX_VCPUS:
        raise cfg.error("maxvcpus" if "maxvcpus" in cfg else "vcpus",
                        f"{maxvcpus} vCPUs is more than pyxen supports ({MAX_VCPUS})")

    vnuma: list[dict[str, Any]] = []
    if "vnuma" in cfg:
        from .numa import vnuma_from_xlconfig
        vnuma, maxmem, maxvcpus = vnuma_from_xlconfig(cfg, memory, maxmem, vcpus, maxvcpus)
    if maxvcpus > MAX_VCPUS:
        raise cfg.error("vnuma", f"{maxvcpus} vCPUs is more than pyxen supports ({MAX_VCPUS})")

    kernel = _path(cfg.get_string("kernel"), cwd)
    if kernel is None:
        raise XlCfgError(cfg.source, None, "Neither kernel nor bootloader specified "
                         '(a PVH domain needs kernel = "/path/to/kernel")')
    ramdisk = _path(cfg.get_string("ramdisk"), cwd)

    cmdline = cfg.get_string("cmdline")
    if cmdline is None:
        root, extra = cfg.get_string("root"), cfg.get_string("extra")
        if root is not None:
            cmdline = f"root={root} {extra}" if extra is not None else f"root={root}"
        else:
            cmdline = extra or ""

    disks = []
    for i, item in enumerate(cfg.get_list("disk") or []):
        if not isinstance(item, str):
            raise cfg.error("disk", f"disk[{i}] is a list but should be a string")
        try:
            disk = parse_disk(item, cfg.source)
            if disk.target and not os.path.isabs(os.path.expanduser(disk.target)):
                disk.target = _join(cwd, disk.target)
        except DiskSpecError as e:
            raise XlCfgError(cfg.source, None, str(e).removeprefix(f"{cfg.source}: ")) \
                from None
        disks.append(disk)
    try:
        check_disks(disks)
    except DiskSpecError as e:
        raise cfg.error("disk", str(e)) from None

    vifs = []
    for i, item in enumerate(cfg.get_list("vif") or []):
        if not isinstance(item, str):
            raise cfg.error("vif", f"vif[{i}] is a list but should be a string")
        try:
            vifs.append(parse_vif(item, cfg.source))
        except VifSpecError as e:
            raise XlCfgError(cfg.source, None, str(e).removeprefix(f"{cfg.source}: ")) \
                from None
    try:
        assign_devids(vifs)
    except VifSpecError as e:
        raise cfg.error("vif", str(e)) from None

    from .sched import from_xlconfig as sched_keys
    sched = sched_keys(cfg, maxvcpus)

    return DomainConfig(
        name=name, uuid=uuid, type=dtype, memory=memory, maxmem=maxmem, vcpus=vcpus,
        maxvcpus=maxvcpus, kernel=kernel, ramdisk=ramdisk, cmdline=cmdline,
        on_poweroff=_action(cfg, "on_poweroff"), on_reboot=_action(cfg, "on_reboot"),
        on_crash=_action(cfg, "on_crash"), on_watchdog=_action(cfg, "on_watchdog"),
        disks=[d.to_json() for d in disks],
        vifs=[v.to_json() for v in vifs], vnuma=vnuma,
        **sched,
    )


def load(path: str, overrides: list[str] | tuple[str, ...] = (),
         cwd: Path | None = None, warn: Callable[[str], None] | None = None) -> DomainConfig:
    """Read an xl.cfg file, apply ``key=value`` overrides, and build the DomainConfig."""
    cfg = parse_file(path)
    for arg in overrides:
        apply_override(cfg, arg)
    return from_xlconfig(cfg, cwd, warn)
