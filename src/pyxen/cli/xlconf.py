"""/etc/xen/xl.conf, xl's global configuration (xl.conf(5); tools/xl/xl.c's
parse_global_config), read as xl reads it: xl.cfg syntax, unknown keys ignored, a bad value
reported and the default kept.

``PYXEN_XL_CONF`` names another file (tests, or a host without /etc/xen). xl complains on
every command when its file cannot be read; pyxen does so only when PYXEN_XL_CONF names a
file that cannot be read (a host without /etc/xen/xl.conf is the normal case here).
Where each key applies in pyxen is listed in docs/xl.md.
"""

from __future__ import annotations

import os

from pyxen.cli.xlcore import fail, one_line

TYPE_CHECKING = False
if TYPE_CHECKING:  # `xl create` reads this file: no typing, no dataclasses at start-up
    from typing import Any

DEFAULT_PATH = "/etc/xen/xl.conf"


class XlConf:
    """The keys xl.conf sets (a plain class: dataclasses cost `xl create` start-up)."""

    def __init__(self) -> None:
        self.autoballoon = "auto"  # on / off / auto: pyxen's dom0 is the host, never balloons
        self.run_hotplug_scripts = 1
        self.lockfile = "/var/lock/xl"
        self.vif_script: str | None = None  # vif.default.script
        self.vif_bridge: str | None = None  # vif.default.bridge
        self.vif_gatewaydev: str | None = None  # vif.default.gatewaydev
        self.vif_backend: str | None = None  # vif.default.backend
        self.output_format = "json"  # json / sxp (`xl list -l`, `xl create -n`)
        self.blkdev_start: str | None = None
        self.claim_mode = 1
        self.max_grant_frames: int | None = None
        self.max_maptrack_frames: int | None = None
        self.domid_policy = "xen"


CONF = XlConf()


def path() -> str:
    return os.environ.get("PYXEN_XL_CONF") or DEFAULT_PATH


def load() -> XlConf:
    """Read xl.conf into CONF (defaults when there is none)."""
    name = path()
    try:
        with open(name, encoding="utf-8", errors="surrogateescape") as f:
            data = f.read()
    except OSError as e:
        if "PYXEN_XL_CONF" in os.environ:
            one_line(f"Failed to read config file: {name}: {e.strerror}")
        return CONF
    from pyxen.toolstack.xlcfg import XlCfgError, parse  # only when there is a file
    try:
        cfg = parse(data, name)
    except XlCfgError as e:
        fail(f"Failed to parse config file: {e}")

    def string(key: str) -> str | None:
        try:
            return cfg.get_string(key)
        except XlCfgError as e:
            one_line(f"{e.source}:{e.line}: warning: {e.message}")
            return None

    def number(key: str) -> int | None:
        try:
            return cfg.get_long(key)
        except XlCfgError as e:
            one_line(f"{e.source}:{e.line}: warning: {e.message}")
            return None

    _read(cfg, string, number)
    return CONF


def _read(cfg: Any, string: Any, number: Any) -> None:
    if (v := string("autoballoon")) is not None:
        if v in ("on", "1", "off", "0", "auto"):
            CONF.autoballoon = {"1": "on", "0": "off"}.get(v, v)
        else:
            one_line("invalid autoballoon option")
    if (n := number("run_hotplug_scripts")) is not None:
        CONF.run_hotplug_scripts = n
    if (v := string("lockfile")) is not None:
        CONF.lockfile = v
    if (v := string("vifscript")) is not None:
        one_line("the global config option vifscript is deprecated, please switch to "
                 "vif.default.script")
        CONF.vif_script = v
    if (v := string("vif.default.script")) is not None:
        CONF.vif_script = v
    if (v := string("defaultbridge")) is not None:
        one_line("the global config option defaultbridge is deprecated, please switch to "
                 "vif.default.bridge")
        CONF.vif_bridge = v
    if (v := string("vif.default.bridge")) is not None:
        CONF.vif_bridge = v
    if (v := string("vif.default.gatewaydev")) is not None:
        CONF.vif_gatewaydev = v
    if (v := string("vif.default.backend")) is not None:
        CONF.vif_backend = v
    if (v := string("output_format")) is not None:
        if v in ("json", "sxp"):
            CONF.output_format = v
        else:
            one_line(f'invalid default output format "{v}"')
    if (v := string("blkdev_start")) is not None:
        CONF.blkdev_start = v
    if (n := number("claim_mode")) is not None:
        CONF.claim_mode = n
    if (n := number("max_grant_frames")) is not None:
        CONF.max_grant_frames = n
    if (n := number("max_maptrack_frames")) is not None:
        CONF.max_maptrack_frames = n
    if (v := string("domid_policy")) is not None:
        if v in ("xen", "random"):
            CONF.domid_policy = v
        else:
            one_line(f'invalid domid_policy option "{v}"')


def vif_defaults(vif: dict[str, Any]) -> dict[str, Any]:
    """xl's parse_nic_config starts from xl.conf's vif.default.* before the vifspec's
    own items: fill in what a vif left unset."""
    for key, value in (("bridge", CONF.vif_bridge), ("script", CONF.vif_script),
                       ("gatewaydev", CONF.vif_gatewaydev), ("backend", CONF.vif_backend)):
        if value is not None and not vif.get(key):
            vif[key] = value
    return vif


def check_output_format() -> None:
    """pyxen prints domain configurations as JSON only."""
    if CONF.output_format != "json":
        fail(f'output_format="{CONF.output_format}" ({path()}) is not supported by pyxen: '
             'only "json"')
