"""libxl's domain_config JSON (what xl save stores, xl create -n / xl list -l print) to
and from DomainConfig: round trips for every example and a config using every key pyxen
keeps, a Xen 4.17-style document with fields pyxen does not use, and what it refuses."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxen.toolstack.config import ConfigError, from_xlconfig, load
from pyxen.toolstack.cpulist import Topology
from pyxen.toolstack.libxl_json import config_json, from_libxl_json, to_libxl_json
from pyxen.toolstack.xlcfg import parse

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
TOPO = Topology(8, {0: {0, 1, 2, 3}, 1: {4, 5, 6, 7}})


def conf(text: str):
    return from_xlconfig(parse(text, "t.cfg"), Path("/work"))


@pytest.mark.parametrize("cfgfile", sorted((ROOT / "examples").glob("*.cfg")),
                         ids=lambda p: p.name)
def test_examples_round_trip(cfgfile: Path) -> None:
    c = load(str(cfgfile), cwd=ROOT)
    j = to_libxl_json(c, TOPO)
    assert json.loads(json.dumps(j)) == j
    assert j["c_info"] == {"type": "pvh", "name": c.name, "uuid": c.uuid}
    assert j["b_info"]["kernel"] == c.kernel and j["b_info"]["type.pvh"] == {}
    assert j["b_info"]["target_memkb"] == c.memory * 1024
    assert from_libxl_json(j, TOPO) == c


FULL = '''name = "full"
type = "pvh"
kernel = "/boot/vmlinuz"
ramdisk = "/boot/initrd"
root = "/dev/xvda1"
extra = "console=hvc0"
memory = 96
maxmem = 128
vcpus = 2
maxvcpus = 4
uuid = "3a2f6c1e-9b1d-4e6c-8c51-0f3e2d1a9b77"
cpu_weight = 512
cap = 150
cpus = ["0-1", "nodes:1", "3"]
cpus_soft = "all"
pool = "Pool-0"
on_poweroff = "preserve"
on_reboot = "rename-restart"
on_crash = "restart"
on_watchdog = "preserve"
disk = [ "/img/a.img,raw,xvda,rw", "format=raw, vdev=xvdb, access=ro, devtype=cdrom, target=/img/b.iso", "vdev=xvdc, format=raw, backendtype=qdisk, discard, direct-io-safe, colo-host=h, colo-port=7, grant_usage=1, target=/img/c.img" ]
vif = [ "mac=00:16:3e:01:02:03, bridge=xenbr1, ip=10.0.0.2, vifname=v0, rate=10Mb/s, mtu=9000", "type=vif, script=vif-nat, gatewaydev=eth0" ]
'''


def test_every_kept_key_round_trips() -> None:
    c = conf(FULL)
    j = to_libxl_json(c, TOPO)
    b = j["b_info"]
    assert (b["max_vcpus"], b["avail_vcpus"]) == (4, [0, 1])
    assert (b["max_memkb"], b["target_memkb"]) == (128 * 1024, 96 * 1024)
    assert b["cmdline"] == "root=/dev/xvda1 console=hvc0" and b["ramdisk"] == "/boot/initrd"
    assert b["sched_params"] == {"weight": 512, "cap": 150}
    # xl resolves cpu-lists to bitmaps, one per vCPU; unlisted vCPUs get every CPU
    assert b["vcpu_hard_affinity"] == [[0, 1], [4, 5, 6, 7], [3], list(range(8))]
    assert b["vcpu_soft_affinity"] == [list(range(8))] * 4
    assert j["c_info"]["pool_name"] == "Pool-0"
    assert (j["on_poweroff"], j["on_reboot"], j["on_crash"], j["on_watchdog"]) == \
        ("preserve", "restart_rename", "restart", "preserve")
    d0, d1, d2 = j["disks"]
    assert d0 == {"pdev_path": "/img/a.img", "vdev": "xvda", "format": "raw", "readwrite": 1}
    assert d1["is_cdrom"] == 1 and "readwrite" not in d1
    assert d2["backend"] == "qdisk" and d2["discard_enable"] == "True"
    assert d2["direct_io_safe"] is True
    n0, n1 = j["nics"]
    assert n0["mac"] == "00:16:3e:01:02:03" and n0["bridge"] == "xenbr1"
    assert n0["ifname"] == "v0" and n0["mtu"] == 9000 and n0["rate_bytes_per_interval"] > 0
    assert n1["nictype"] == "vif" and n1["script"] == "vif-nat"
    assert (d2["colo_host"], d2["colo_port"], d2["grant_usage"]) == ("h", 7, "True")
    back = from_libxl_json(j, TOPO)
    want = dataclasses.replace(c, cpus=["0-1", "4-7", "3", "all"], cpus_soft="all")
    assert back == want
    assert to_libxl_json(back, TOPO) == j  # a fixed point


def test_vnuma_round_trips() -> None:
    c = conf('name="v"\ntype="pvh"\nkernel="/k"\nmemory=64\n'
             'vnuma=[["pnode=0","size=32","vcpus=0","vdistances=10,20"],'
             '["pnode=0","size=32","vcpus=1","vdistances=20,10"]]\n')
    j = to_libxl_json(c, TOPO)
    assert j["b_info"]["vnuma_nodes"] == [
        {"memkb": 32768, "distances": [10, 20], "pnode": 0, "vcpus": [0]},
        {"memkb": 32768, "distances": [20, 10], "pnode": 0, "vcpus": [1]}]
    assert from_libxl_json(j, TOPO) == c


XEN_STYLE = {  # the shape of Xen 4.17's `xl create -n` for a PVH guest, with extras
    "c_info": {"type": "pvh", "name": "x", "uuid": "6f4a2f0a-3c5e-4f4e-9a1e-6e5e0c3b1d2a",
               "run_hotplug_scripts": "True", "hap": "True"},
    "b_info": {"max_vcpus": 2, "avail_vcpus": [0, 1], "max_memkb": 65536,
               "target_memkb": 65536, "shadow_memkb": 1536, "video_memkb": -1,
               "sched_params": {"sched": "credit2", "weight": -1, "cap": -1},
               "kernel": "/boot/k", "cmdline": "console=hvc0", "type.pvh": {},
               "arch_arm": {}, "arch_x86": {"msr_relaxed": "False"}},
    "disks": [{"backend_domid": 0, "pdev_path": "/img", "vdev": "xvda", "backend": "phy",
               "format": "raw", "readwrite": 1, "discard_enable": "<default>",
               "colo_enable": "<default>", "colo_host": "h"}],
    "nics": [{"backend_domid": 0, "devid": 0, "mac": "00:16:3e:aa:bb:cc",
              "bridge": "xenbr0", "script": "vif-bridge", "nictype": "vif"}],
    "on_reboot": "restart", "on_soft_reset": "soft_reset",
}


def test_reads_xen_style_documents() -> None:
    c = from_libxl_json(copy.deepcopy(XEN_STYLE), TOPO)
    assert (c.name, c.memory, c.vcpus, c.cmdline) == ("x", 64, 2, "console=hvc0")
    assert (c.cpu_weight, c.cap) == (256, 0)  # libxl's -1: "default"
    assert c.on_poweroff == "destroy"  # libxl's default when absent
    d = c.disk_specs()[0]
    assert (d.target, d.backendtype, d.readwrite, d.discard) == ("/img", "phy", True, None)
    assert d.extra == {"colo-host": "h"}
    n = c.nic_specs()[0]
    assert (n.mac, n.bridge, n.type, n.devid) == ("00:16:3e:aa:bb:cc", "xenbr0", "vif", 0)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["c_info"].update(type="pv"), 'domain type "pv" is not supported'),
    (lambda d: d["c_info"].update(type="hvm"), 'domain type "hvm" is not supported'),
    (lambda d: d.pop("c_info"), "no c_info/b_info"),
    (lambda d: d["c_info"].pop("name"), "Domain name must be specified"),
    (lambda d: d["b_info"].update(max_memkb="lots"), "b_info.max_memkb must be a number"),
    (lambda d: d["b_info"].update(avail_vcpus=[0, 2], max_vcpus=3), "a gap"),
    (lambda d: d.update(on_crash="coredump_destroy"), "not supported by pyxen"),
    (lambda d: d.update(on_crash="explode"), 'Unknown on_crash action "explode"'),
    (lambda d: d["b_info"].update(kernel="relative/k"), "must be absolute"),
    (lambda d: d["b_info"].update(target_memkb=2 * 65536), "maxmem"),
    (lambda d: d["disks"][0].update(format="qcow2"), "format=qcow2 is not supported"),
    (lambda d: d["b_info"].update(vcpu_hard_affinity="0-3"), "list of CPU bitmaps"),
    (lambda d: d.update(nics=[{"mac": "zz"}]), "Invalid parameter `mac'"),
])
def test_refuses_what_pyxen_cannot_run(change, fragment) -> None:
    d = copy.deepcopy(XEN_STYLE)
    change(d)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        from_libxl_json(d, TOPO)


def test_refuses_non_objects() -> None:
    for bad in ([], "x", None, {"c_info": [], "b_info": {}}):
        with pytest.raises(ConfigError):
            from_libxl_json(bad, TOPO)


def test_config_json_for_xl_list_long() -> None:
    c = conf(FULL.replace('cpus = ["0-1", "nodes:1", "3"]\n', "").replace(
        'cpus_soft = "all"\n', ""))
    assert config_json(c.to_json())["c_info"]["name"] == "full"


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=6)
    | st.floats(allow_nan=False),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=3),
    max_leaves=8)


def _doc() -> dict:
    d = copy.deepcopy(XEN_STYLE)
    d["b_info"]["vnuma_nodes"] = [{"memkb": 65536, "distances": [10], "pnode": 0,
                                   "vcpus": [0, 1]}]
    d["b_info"]["vcpu_hard_affinity"] = [[0, 1], [2]]
    d["b_info"]["nodemap"] = [0]
    d["c_info"]["pool_name"] = "Pool-0"
    d["disks"][0].update(colo_port=7, grant_usage="True", is_cdrom=1)
    d["nics"][0].update(mtu=1500, rate_bytes_per_interval=100)
    return d


def _paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


PATHS = [p for p in _paths(_doc()) if p]


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(PATHS), value=json_value)
def test_any_malformed_document_is_a_config_error(path, value) -> None:
    """An image's configuration is untrusted input: whatever it holds, the answer is a
    DomainConfig or a ConfigError, nothing else."""
    d = _doc()
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        from_libxl_json(d, TOPO)
    except ConfigError:
        pass
