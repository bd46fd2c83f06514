"""One ``vif = [...]`` entry in xl-network-configuration(5) syntax, parsed as xl does it
(tools/xl/xl_parse.c parse_nic_config, tools/libs/util/libxlu_vif.c for rate=).

A vifspec is ``key=value`` items separated by commas (each trimmed of leading blanks);
every key is optional. Errors use xl's wording: ``Invalid parameter `mac'.``,
``unrecognized argument `foo=1'``, ``<source>: config parsing error in vif: invalid rate
in `10Zb/s'``; libxl's defaults (libxl__device_nic_setdefault) are applied when the
device is added: bridge xenbr0, a random MAC in Xen's OUI 00:16:3e, mtu 1500, devid the
lowest free. ``script`` defaults to none here, where libxl would run vif-bridge: pyxen's
built-in step does what vif-bridge does (backends/tap.py), and a script= (e.g.
/etc/xen/scripts/vif-bridge itself) is run instead when given.
"""

from __future__ import annotations

import os

from pyxen.record import asdict, dataclass, fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_BRIDGE = "xenbr0"
DEFAULT_MTU = 1500
DEFAULT_RATE_INTERVAL_US = 50000
XEN_OUI = (0x00, 0x16, 0x3E)
UINT32_MAX = 0xFFFFFFFF


class VifSpecError(Exception):
    """xl's one-line message for a bad vifspec."""


@dataclass
class NicSpec:
    """libxl_device_nic, the part pyxen uses (defaults unset: None)."""

    devid: int | None = None
    mac: str | None = None  # "00:16:3e:xx:xx:xx", lowercase
    bridge: str | None = None
    ip: str | None = None
    type: str | None = None  # "vif" or "ioemu"
    model: str | None = None
    script: str | None = None
    vifname: str | None = None
    backend: str | None = None
    gatewaydev: str | None = None
    mtu: int | None = None
    rate_bytes_per_interval: int | None = None
    rate_interval_usecs: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> NicSpec:
        if not isinstance(data, dict):
            raise VifSpecError("malformed vif: not an object")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise VifSpecError(f"malformed vif: unknown field {sorted(unknown)[0]!r}")
        spec = cls(**data)
        for k in ("devid", "mtu", "rate_bytes_per_interval", "rate_interval_usecs"):
            v = getattr(spec, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise VifSpecError(f"malformed vif: {k} must be a number")
        for k in ("mac", "bridge", "ip", "type", "model", "script", "vifname", "backend",
                  "gatewaydev"):
            v = getattr(spec, k)
            if v is not None and not isinstance(v, str):
                raise VifSpecError(f"malformed vif: {k} must be a string")
        if spec.mac is not None and parse_mac(spec.mac) is None:
            raise VifSpecError("Invalid parameter `mac'.")
        return spec


def parse_mac(text: str) -> str | None:
    """xl's mac= parsing (six strtoul base-16 fields, each <= 255), as libxl prints it."""
    import re  # only for disk/vif specs: `xl create` starts without it
    parts = text.split(":")
    if len(parts) != 6:
        return None
    out = []
    for p in parts:
        if not re.fullmatch(r"[0-9a-fA-F]{1,2}", p):
            return None
        out.append(int(p, 16))
    return ":".join(f"{b:02x}" for b in out)


def random_mac() -> str:
    """libxl__device_nic_setdefault: Xen's OUI, then 23 random bits (top bit clear)."""
    r = os.urandom(3)
    return ":".join(f"{b:02x}" for b in (*XEN_OUI, r[0] & 0x7F, r[1], r[2]))


def _rate_error(source: str, msg: str, text: str) -> VifSpecError:
    return VifSpecError(f"{source}: config parsing error in vif: {msg} in `{text}'")


def parse_rate(text: str, source: str = "command line") -> tuple[int, int]:
    """xlu_vif_parse_rate: "RATE/s[@INTERVAL]" -> (bytes per interval, interval in us)."""
    import re  # only for disk/vif specs: `xl create` starts without it
    rate, at, interval = text.partition("@")
    if not rate:
        raise _rate_error(source, "no rate specified", text)
    if not re.fullmatch(r"[0-9]+[GMK]?[Bb]/s", rate):
        raise _rate_error(source, "invalid rate", rate)
    m = re.match(r"[0-9]+", rate)
    assert m is not None
    value = int(m.group())
    if value == 0 or value > UINT32_MAX:
        raise _rate_error(source, "rate overflow", rate)
    unit = rate[m.end():]
    value *= {"G": 10**9, "M": 10**6, "K": 10**3}.get(unit[0], 1)
    if "b" in unit:
        value //= 8
    usecs = DEFAULT_RATE_INTERVAL_US
    if at:
        if not re.fullmatch(r"[0-9]+[mu]?s?", interval):
            raise _rate_error(source, "invalid replenishment interval", interval)
        m = re.match(r"[0-9]+", interval)
        assert m is not None
        usecs = int(m.group())
        if usecs == 0 or usecs > UINT32_MAX:
            raise _rate_error(source, "replenishment interval overflow", interval)
        suffix = interval[m.end():]
        if suffix in ("s", ""):
            usecs *= 10**6
        elif suffix.startswith("m"):
            usecs *= 1000
        if usecs > UINT32_MAX:
            raise _rate_error(source, "replenishment interval overflow", interval)
    if value > (1 << 64) // usecs:
        raise _rate_error(source, "rate overflow", text)
    return value * usecs // 10**6, usecs


def apply_item(spec: NicSpec, token: str, source: str = "command line") -> None:
    """parse_nic_config for one ``key=value`` token."""
    import re  # only for disk/vif specs: `xl create` starts without it
    key, eq, value = token.partition("=")
    if not eq:
        raise VifSpecError(f"unrecognized argument `{token}'")
    if key == "type":
        if value not in ("vif", "ioemu"):
            raise VifSpecError("Invalid parameter `type'.")
        spec.type = value
    elif key == "mac":
        mac = parse_mac(value)
        if mac is None:
            raise VifSpecError("Invalid parameter `mac'.")
        spec.mac = mac
    elif key in ("bridge", "ip", "script", "model", "vifname", "backend", "gatewaydev",
                 "netdev"):
        setattr(spec, "gatewaydev" if key == "netdev" else key, value)
    elif key == "rate":
        spec.rate_bytes_per_interval, spec.rate_interval_usecs = parse_rate(value, source)
    elif key == "mtu":
        if not re.fullmatch(r"[0-9]+", value) or not 68 <= int(value) <= 65535:
            raise VifSpecError(f"xl: failed to convert \"{value}\" to number" if
                               not value.isdigit() else "Invalid parameter `mtu'.")
        spec.mtu = int(value)
    elif key == "devid":
        if not re.match(r"[0-9]+", value):
            raise VifSpecError(f"xl: failed to convert \"{value}\" to number")
        spec.devid = int(re.match(r"[0-9]+", value).group())  # type: ignore[union-attr]
    elif key == "accel":
        pass  # xl: "the accel parameter for vifs is currently not supported" (a warning)
    else:
        raise VifSpecError(f"unrecognized argument `{token}'")


def parse_vif(text: str, source: str = "command line") -> NicSpec:
    """One vifspec string (``'mac=..,bridge=..'``; the empty string is a default vif)."""
    spec = NicSpec()
    for raw in text.split(","):
        token = raw.lstrip(" ")
        if token:
            apply_item(spec, token, source)
    check(spec)
    return spec


def check(spec: NicSpec) -> None:
    """What libxl refuses for a PVH guest's vif, and what pyxen cannot do."""
    import re  # only for disk/vif specs: `xl create` starts without it
    if spec.type == "ioemu":
        raise VifSpecError("trying to create PV or PVH guest with an emulated interface")
    if spec.backend not in (None, "", "0", "Domain-0"):
        raise VifSpecError(f"vif backend={spec.backend}: driver domains are not supported by "
                           "pyxen: only Domain-0 serves vifs")
    for key in ("bridge", "vifname"):
        v = getattr(spec, key)
        if v is not None and not (0 < len(v) < 16 and re.fullmatch(r"[^\s/:]+", v)):
            raise VifSpecError(f"Invalid parameter `{key}': {v!r} is not a network "
                               "interface name (1-15 characters, no '/', ':' or blanks)")


def vif_ifname(domid: int, devid: int, spec: NicSpec) -> str:
    """libxl__device_nic_devname: vifname=, else vifDOMID.DEVID."""
    return spec.vifname or f"vif{domid}.{devid}"


def assign_devids(specs: list[NicSpec], taken: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """libxl__device_nextid / xl: devid= kept, otherwise the lowest index not in use;
    a devid used twice is an error."""
    used = set(taken)
    for s in specs:
        if s.devid is not None:
            if s.devid in used:
                raise VifSpecError(f"Duplicate vif devid {s.devid}")
            used.add(s.devid)
    n = 0
    for s in specs:
        if s.devid is None:
            while n in used:
                n += 1
            s.devid = n
            used.add(n)
