"""xl-network-configuration parsing (pure logic): libxlu's rate arithmetic, xl's
wording for bad items, libxl's defaults."""

from __future__ import annotations

import re

import pytest

from pyxen.toolstack import config as domconfig
from pyxen.toolstack.vif import nodes, setdefault
from pyxen.toolstack.vifspec import NicSpec, VifSpecError, parse_rate, parse_vif, random_mac
from pyxen.toolstack.xlcfg import XlCfgError, parse


@pytest.mark.parametrize("text,expect", [
    ("10Mb/s", (62500, 50000)),          # 1.25 MB/s over the default 50 ms
    ("250KB/s", (12500, 50000)),
    ("1MB/s@20ms", (20000, 20000)),      # xl-network-configuration's own example
    ("100B/s@1s", (100, 1000000)),
    ("8b/s@500us", (0, 500)),
])
def test_rate(text: str, expect: tuple[int, int]) -> None:
    assert parse_rate(text) == expect


def test_full_vifspec_and_libxl_nodes() -> None:
    spec = parse_vif("mac=00:16:3E:74:3d:76, bridge=br1,ip=10.0.0.2,type=vif,model=e1000,"
                     "rate=1MB/s@20ms,script=vif-bridge,vifname=web0,backend=0,mtu=9000")
    spec.devid = 2
    back, front = nodes(5, setdefault(spec))
    assert back == {"script": "/etc/xen/scripts/vif-bridge", "vifname": "web0",
                    "mac": "00:16:3e:74:3d:76", "ip": "10.0.0.2", "rate": "20000,20000",
                    "mtu": "9000", "bridge": "br1", "handle": "2", "type": "vif",
                    "hotplug-status": ""}
    assert front == {"handle": "2", "mac": "00:16:3e:74:3d:76", "trusted": "1", "mtu": "9000"}
    assert NicSpec.from_json(spec.to_json()) == spec


def test_defaults_are_libxls() -> None:
    spec = setdefault(parse_vif(""))
    assert spec.bridge == "xenbr0" and spec.type == "vif"
    assert re.fullmatch(r"00:16:3e:[0-7][0-9a-f](:[0-9a-f]{2}){2}", spec.mac or "")
    assert len({random_mac() for _ in range(20)}) > 1


@pytest.mark.parametrize("item,error", [
    ("mac=00:16:3e:00:00", "Invalid parameter `mac'."),
    ("mac=100:16:3e:00:00:01", "Invalid parameter `mac'."),
    ("type=tap", "Invalid parameter `type'."),
    ("bogus", "unrecognized argument `bogus'"),
    ("rate=", "x.cfg: config parsing error in vif: no rate specified in `'"),
    ("rate=0MB/s", "x.cfg: config parsing error in vif: rate overflow in `0MB/s'"),
    ("rate=1MB/s@5h", "x.cfg: config parsing error in vif: invalid replenishment "
                      "interval in `5h'"),
    ("backend=3", "vif backend=3: driver domains are not supported by pyxen"),
    ("vifname=much-too-long-name", "Invalid parameter `vifname'"),
])
def test_bad_items(item: str, error: str) -> None:
    with pytest.raises(VifSpecError) as e:
        parse_vif(item, "x.cfg")
    assert str(e.value).startswith(error)


def test_vif_list_in_domain_config() -> None:
    cfg = parse('name="n"\ntype="pvh"\nkernel="/k"\n'
                "vif = [ 'bridge=a', 'devid=0,bridge=b', '' ]\n", "n.cfg")
    dc = domconfig.from_xlconfig(cfg)
    assert [(v["devid"], v.get("bridge")) for v in dc.vifs] == [(1, "a"), (0, "b"), (2, None)]
    assert domconfig.DomainConfig.from_json(dc.to_json()).nic_specs()[0].bridge == "a"
    bad = parse('name="n"\ntype="pvh"\nkernel="/k"\nvif = [ "mac=1" ]\n', "n.cfg")
    with pytest.raises(XlCfgError) as e:
        domconfig.from_xlconfig(bad)
    assert str(e.value) == "n.cfg: Invalid parameter `mac'."
    dup = parse('name="n"\ntype="pvh"\nkernel="/k"\nvif = [ "devid=1", "devid=1" ]\n', "n.cfg")
    with pytest.raises(XlCfgError, match="Duplicate vif devid 1"):
        domconfig.from_xlconfig(dup)
