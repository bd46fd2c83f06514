"""One ``disk = [...]`` entry, as libxlutil's disk parser reads it (xl-disk-configuration).

A spec is comma-separated parameters: ``key=value`` ones (format, vdev, access, devtype,
backend, backendtype, script, target, discard/no-discard, ...) anywhere, and positional
ones ``target,format,vdev,access`` in that order. ``target=`` eats the rest of the spec
(so a path may hold commas). The deprecated prefixes ``raw:``/``qcow2:``/``phy:``/
``file:``/... before the target are accepted; after one, the next positional parameter
is the vdev. Errors are xl's: ``SOURCE: config parsing error in disk specification:
MESSAGE: near `X' in `SPEC'``.

Virtual device names become Xen device numbers as docs/misc/vbd-interface.txt says
(libxl__device_disk_dev_number): xvdX (202 << 8 | disk << 4 | part, or the extended
1 << 28 | disk << 8 | part), hdX (majors 3 and 22), sdX (major 8), dDpP, or a number.
"""

from __future__ import annotations

from pyxen.record import asdict, dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMATS = ("raw", "qcow", "qcow2", "vhd", "empty", "qed")
BACKENDTYPES = ("phy", "tap", "qdisk", "standalone")
SPECIFICATIONS = ("xen", "virtio")
DEFAULT_SCRIPT_DIR = "/etc/xen/scripts"


class DiskSpecError(Exception):
    """str() is the whole line xl prints."""


@dataclass
class DiskSpec:
    """libxl_device_disk, the parts pyxen uses (JSON-able: it travels in config.json)."""

    target: str | None = None  # pdev_path
    format: str | None = None
    vdev: str | None = None
    readwrite: bool = True
    is_cdrom: bool = False
    removable: bool = False
    backend: str | None = None  # backend domain name
    backendtype: str | None = None
    script: str | None = None
    discard: bool | None = None
    direct_io_safe: bool = False
    specification: str | None = None
    trusted: bool | None = None
    extra: dict[str, str] = field(default_factory=dict)  # colo-*, grant_usage: kept, unused

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> DiskSpec:
        if not isinstance(data, dict):
            raise DiskSpecError(f"malformed disk entry {data!r}")
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as e:
            raise DiskSpecError(f"malformed disk entry: {e}") from None

    @property
    def devid(self) -> int:
        assert self.vdev is not None
        n = vdev_to_devid(self.vdev)
        if n is None:
            raise DiskSpecError(f"Invalid or unsupported virtual disk identifier {self.vdev}")
        return n

    @property
    def mode(self) -> str:
        return "w" if self.readwrite else "r"


class _Parse:
    def __init__(self, spec: str, source: str) -> None:
        self.spec, self.source = spec, source
        self.disk = DiskSpec()
        self.had_prefix = False
        self.access_set = False
        self.format_set = False

    def err(self, near: str | None, message: str) -> DiskSpecError:
        where = f": near `{near}'" if near is not None else ""
        return DiskSpecError(f"{self.source}: config parsing error in disk specification: "
                             f"{message}{where} in `{self.spec}'")

    def save(self, attr: str, what: str, value: str) -> None:
        old = getattr(self.disk, attr)
        if old:  # an empty earlier value may be overwritten, as libxlu's savestring
            raise self.err(value, f"{what} respecified")
        setattr(self.disk, attr, value)

    def set_format(self, value: str) -> None:
        fmt = "raw" if value == "" else value
        if fmt not in FORMATS:
            raise self.err(value, "unknown value for format")
        if self.disk.format is not None and self.disk.format != fmt:
            raise self.err(value, "format respecified")
        self.disk.format = fmt

    def set_access(self, value: str) -> None:
        if value in ("r", "ro"):
            self.disk.readwrite = False
        elif value in ("rw", "w", ""):
            self.disk.readwrite = True
        else:
            raise self.err(value, "unknown value for access")

    def vdev_devtype(self, text: str) -> bool:
        """``xvda:cdrom`` (deprecated): True if text had a devtype."""
        vdev, colon, devtype = text.rpartition(":")
        if not colon:
            return False
        self.save("vdev", "vdev", vdev)
        if devtype == "cdrom":
            self.disk.is_cdrom = True
        elif devtype == "disk":
            self.disk.is_cdrom = False
        else:
            raise self.err(devtype, "unknown deprecated type")
        return True

    def run(self) -> DiskSpec:
        import re  # only for disk/vif specs: `xl create` starts without it
        s = self.spec
        pos = 0
        while pos < len(s):
            m = re.match(r"[ \t\n]+(?=[^ \t\n])", s[pos:])
            if m:
                pos += m.end()
                continue
            rest = s[pos:]
            if rest.startswith("target="):
                value = rest[len("target="):]
                if value.endswith(","):
                    value = value[:-1]
                self.save("target", "target", value)
                break
            m = re.match(r"([^,]*)(,?)", rest)
            assert m is not None
            item = m.group(1)
            pos += m.end()
            if not item and not m.group(2):
                break
            self.item(item, rest)
        return self.finish()

    def item(self, item: str, rest: str) -> None:
        import re  # only for disk/vif specs: `xl create` starts without it
        d = self.disk
        key, eq, value = item.partition("=")
        if eq and re.fullmatch(r"[a-z][-a-z0-9_]*", key):
            if key == "format":
                self.set_format(value)
            elif key == "devtype":
                if value == "cdrom":
                    d.is_cdrom = True
                elif value == "disk":
                    d.is_cdrom = False
                else:
                    raise self.err(item + ("," if rest.startswith(item + ",") else ""),
                                   "unknown value for type")
            elif key == "access":
                self.set_access(value)
            elif key == "backend":
                self.save("backend", "backend", value)
            elif key == "backendtype":
                if value not in BACKENDTYPES:
                    raise self.err(value, "unknown value for backendtype")
                if d.backendtype is not None and d.backendtype != value:
                    raise self.err(value, "backend respecified")
                d.backendtype = value
            elif key == "specification":
                if value not in SPECIFICATIONS:
                    raise self.err(value, "unknown value for specification")
                d.specification = value
            elif key == "vdev":
                self.save("vdev", "vdev", value)
            elif key == "script":
                self.save("script", "script", value)
            elif key in ("colo-host", "colo-port", "colo-export", "active-disk",
                         "hidden-disk") or item in ("grant_usage=1", "grant_usage=0"):
                d.extra[key] = value
            else:
                raise self.err(item + ("," if rest.startswith(item + ",") else ""),
                               "unknown parameter")
            return
        if item in ("cdrom",):
            d.is_cdrom = True
            return
        flags = {"direct-io-safe": ("direct_io_safe", True), "discard": ("discard", True),
                 "no-discard": ("discard", False), "trusted": ("trusted", True),
                 "untrusted": ("trusted", False), "colo": (None, True),
                 "no-colo": (None, False)}
        if item in flags:
            attr, val = flags[item]
            if attr is not None:
                setattr(d, attr, val)
            return
        if d.target is None:  # deprecated prefixes apply to the first positional only
            m = re.match(r"([a-z][a-z0-9]*):(?=/|[^a-z0-9]|$)", item)
            if m:
                prefix = m.group(1)
                target = item[m.end():]
                if prefix in ("raw", "qcow", "qcow2", "vhd"):
                    self.set_format(prefix)
                elif prefix in ("iscsi", "nbd", "enbd", "drbd"):
                    self.save("script", "script", f"block-{prefix}")
                elif prefix not in ("tapdisk", "tap", "tap2", "aio", "ioemu", "file", "phy"):
                    raise self.err(item, "unknown deprecated disk prefix")
                self.had_prefix = True
                self.save("target", "target", target)
                return
        if "=" in item:
            raise self.err(item, "bad disk syntax")
        if d.target is None:
            self.save("target", "target", item)
        elif not self.had_prefix and d.format is None:
            if d.target == "" and self.vdev_devtype(item):
                d.format = "empty"
            else:
                self.set_format(item)
        elif d.vdev is None:
            if not self.vdev_devtype(item):
                self.save("vdev", "vdev", item)
        elif not self.access_set:
            self.access_set = True
            self.set_access(item)
        else:
            raise self.err(item, "too many positional parameters")

    def finish(self) -> DiskSpec:
        d = self.disk
        if d.format is None:
            d.format = "raw"
        if d.is_cdrom:
            d.removable = True
            d.readwrite = False
            if not d.target:
                d.format = "empty"
        if not d.vdev:
            raise self.err(None, "no vdev specified")
        if d.target is None and not d.removable:
            raise self.err(None, "no target specified (and device not removable)")
        return d


def parse_disk(spec: str, source: str = "xl") -> DiskSpec:
    """Parse one xl disk spec; DiskSpecError carries xl's one-line message."""
    return _Parse(spec, source).run()


# --- virtual device numbers (docs/misc/vbd-interface.txt) ------------------------------


def _letters_partition(text: str, prefix: str, max_disk: int, max_part: int
                       ) -> tuple[int, int] | None:
    import re  # only for disk/vif specs: `xl create` starts without it
    if not text.startswith(prefix):
        return None
    rest = text[len(prefix):]
    m = re.match(r"[a-z]+", rest)
    if not m:
        return None
    disk = -1
    for c in m.group():
        disk = (disk + 1) * 26 + (ord(c) - ord("a"))
        if disk > max_disk:
            return None
    tail = rest[m.end():]
    if not tail:
        return disk, 0
    if not tail.isdigit() or tail.startswith("0") or int(tail) > max_part:
        return None
    return disk, int(tail)


def vdev_to_devid(vdev: str) -> int | None:
    """The Xen virtual device number of a vdev name, or None when it names none."""
    import re  # only for disk/vif specs: `xl create` starts without it
    m = re.fullmatch(r"d(\d+)p(\d+)", vdev)
    found = None
    if m and int(m.group(1)) < (1 << 20) and int(m.group(2)) < 256:
        found = int(m.group(1)), int(m.group(2))
    else:
        found = _letters_partition(vdev, "xvd", (1 << 20) - 1, 255)
    if found is not None:
        disk, part = found
        if disk <= 15 and part <= 15:
            return (202 << 8) | (disk << 4) | part
        return (1 << 28) | (disk << 8) | part
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", vdev)
    if m:
        n = int(vdev, 0) if not re.fullmatch(r"0[0-7]+", vdev) else int(vdev, 8)
        return n if n <= 0x7FFFFFFF else None
    found = _letters_partition(vdev, "hd", 3, 63)
    if found is not None:
        disk, part = found
        return ((3 if disk < 2 else 22) << 8) | ((disk & 1) << 6) | part
    found = _letters_partition(vdev, "sd", 15, 15)
    if found is not None:
        disk, part = found
        return (8 << 8) | (disk << 4) | part
    return None


def _letters(n: int) -> str:
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(ord("a") + r) + out
    return out


def devid_to_vdev(devid: int) -> str | None:
    """libxl__devid_to_vdev: a name for a device number (xvd, hd, sd)."""
    if devid & (1 << 28):
        disk, part = (devid >> 8) & 0xFFFFF, devid & 0xFF
        return f"xvd{_letters(disk)}" + (str(part) if part else "")
    major, minor = devid >> 8, devid & 0xFF
    if major == 202:
        disk, part = minor >> 4, minor & 15
        return f"xvd{_letters(disk)}" + (str(part) if part else "")
    if major in (3, 22):
        disk, part = (0 if major == 3 else 2) + (minor >> 6), minor & 63
        return f"hd{_letters(disk)}" + (str(part) if part else "")
    if major == 8:
        disk, part = minor >> 4, minor & 15
        return f"sd{_letters(disk)}" + (str(part) if part else "")
    return None
