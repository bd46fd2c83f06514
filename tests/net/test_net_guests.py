"""Real guests on the network: netguest.elf (the C netfront) booted by the real `xl`,
its vif a TAP device on a bridge, pinged from a network namespace; two guests pinging
each other; hot-plug with xl network-attach/-list/-detach; hotplug scripts; bad vifs."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from netlan import NETGUEST, Lan, needs_guest, needs_root_net
from xlhost import Host

from pyxen.backends import tap

pytestmark = [needs_root_net, needs_guest]


def console(host: Host, name: str) -> str:
    path = host.root / "console" / f"guest-{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def create(host: Host, name: str, vifs: list[str], cmdline: str = "", *,
           check: bool = True):  # noqa: ANN201
    cfg = host.root.parent / f"{name}.cfg"
    vif = ", ".join(f"'{v}'" for v in vifs)
    cfg.write_text(f'name = "{name}"\ntype = "pvh"\nmemory = 32\nkernel = "{NETGUEST}"\n'
                   f'cmdline = "{cmdline}"\nvif = [ {vif} ]\non_poweroff = "destroy"\n')
    return host.xl("create", str(cfg), check=check)


def wait_console(host: Host, name: str, pattern: str, timeout: float = 60) -> re.Match:
    return host.wait_for(lambda: re.search(pattern, console(host, name)),
                         f"{name}: {pattern!r}", timeout)


def xs_read(host: Host, path: str) -> str | None:
    r = host.xenstore("xenstore-read", path)
    return r.stdout.strip() if r.returncode == 0 else None


def test_host_pings_guest_through_the_bridge(host: Host, lan: Lan) -> None:
    mac = "00:16:3e:12:34:56"
    create(host, "pinged", [f"bridge={lan.bridge},mac={mac},ip={lan.ip(2)}"])
    domid = int(host.list()["pinged"]["id"])
    wait_console(host, "pinged", r"vif 0 connected: mac 00:16:3e:12:34:56 ip " + lan.ip(2))
    ifname = f"vif{domid}.0"
    assert tap.link_master(ifname) == lan.bridge  # pyxen made the bridge and plugged it
    lan.plug()
    r = lan.ping(lan.ip(2))
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr

    bp, fp = f"/local/domain/0/backend/vif/{domid}/0", f"/local/domain/{domid}/device/vif/0"
    expect_back = {"frontend": fp, "frontend-id": str(domid), "online": "1", "state": "4",
                   "mac": mac, "bridge": lan.bridge, "handle": "0", "type": "vif",
                   "ip": lan.ip(2), "hotplug-status": "connected", "feature-sg": "1",
                   "feature-gso-tcpv4": "1", "feature-rx-copy": "1", "feature-rx-flip": "0",
                   "feature-multicast-control": "1"}
    for node, value in expect_back.items():
        assert xs_read(host, f"{bp}/{node}") == value, node
    assert int(xs_read(host, f"{bp}/multi-queue-max-queues") or 0) >= 1
    expect_front = {"backend": bp, "backend-id": "0", "state": "4", "handle": "0",
                    "mac": mac, "request-rx-copy": "1", "feature-rx-notify": "1"}
    for node, value in expect_front.items():
        assert xs_read(host, f"{fp}/{node}") == value, node
    for node in ("tx-ring-ref", "rx-ring-ref", "event-channel"):
        assert (xs_read(host, f"{fp}/{node}") or "").isdigit(), node

    host.xl("destroy", "pinged", check=True)
    assert not tap.link_exists(ifname)
    assert xs_read(host, bp) is None and xs_read(host, fp) is None
    assert xs_read(host, f"/local/domain/0/backend/vif/{domid}") is None


def test_two_guests_ping_each_other(host: Host, lan: Lan) -> None:
    a, b = lan.ip(2), lan.ip(3)
    create(host, "left", [f"bridge={lan.bridge}"], f"ip={a} peer={b} count=3")
    create(host, "right", [f"bridge={lan.bridge}"], f"ip={b} peer={a} count=3")
    m1 = wait_console(host, "left", rf"ping {re.escape(b)}: (\d+)/3 replies")
    m2 = wait_console(host, "right", rf"ping {re.escape(a)}: (\d+)/3 replies")
    assert m1.group(1) == "3" and m2.group(1) == "3", (console(host, "left"),
                                                       console(host, "right"))
    for name in ("left", "right"):  # MACs generated in Xen's OUI
        assert re.search(r"mac 00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2} ",
                         console(host, name))


def test_network_attach_list_detach_on_a_running_guest(host: Host, lan: Lan) -> None:
    create(host, "hot", [f"bridge={lan.bridge}"], f"ip={lan.ip(2)}")
    domid = int(host.list()["hot"]["id"])
    wait_console(host, "hot", r"pyxen net: ready")
    lan.plug()
    host.xl("network-attach", "hot", f"bridge={lan.bridge}", f"ip={lan.ip(2, 1)}",
            "mac=00:16:3e:00:aa:01", check=True)
    wait_console(host, "hot", r"vif 1 connected: mac 00:16:3e:00:aa:01 ip " + lan.ip(2, 1))
    assert tap.link_master(f"vif{domid}.1") == lan.bridge
    rows = host.xl("network-list", "hot", check=True).stdout.splitlines()
    assert rows[0].split()[:3] == ["Idx", "BE", "Mac"]
    assert len(rows) == 3 and rows[2].split()[:6] == ["1", "0", "00:16:3e:00:aa:01", "1",
                                                      "4", rows[2].split()[5]]
    assert rows[2].split()[-1] == f"/local/domain/0/backend/vif/{domid}/1"
    r = lan.ping(lan.ip(2, 1))
    assert r.returncode == 0, r.stdout + r.stderr

    host.xl("network-detach", "hot", "00:16:3e:00:aa:01", check=True)
    wait_console(host, "hot", r"vif 1 closed")
    assert not tap.link_exists(f"vif{domid}.1")
    assert xs_read(host, f"/local/domain/0/backend/vif/{domid}/1") is None
    assert xs_read(host, f"/local/domain/{domid}/device/vif/1") is None
    assert len(host.xl("network-list", "hot", check=True).stdout.splitlines()) == 2
    assert lan.ping(lan.ip(2)).returncode == 0  # vif 0 carries on
    r = host.xl("network-detach", "hot", "7")
    assert r.returncode != 0 and r.stderr.strip() == "Unknown device 7."


@pytest.mark.parametrize("vif,error", [
    ("mac=00:16:3e:zz:00:01", "Invalid parameter `mac'."),
    ("type=bogus", "Invalid parameter `type'."),
    ("color=blue", "unrecognized argument `color=blue'"),
    ("rate=10Zb/s", "config parsing error in vif: invalid rate in `10Zb/s'"),
    ("rate=1MB/s@0ms", "config parsing error in vif: replenishment interval overflow in `0ms'"),
    ("type=ioemu", "trying to create PV or PVH guest with an emulated interface"),
])
def test_bad_vifs_are_refused_and_nothing_is_created(host: Host, vif: str, error: str) -> None:
    r = create(host, "badvif", [vif], check=False)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.strip().endswith(error), \
        r.stderr
    host.assert_clean()


def test_hotplug_script_gets_xens_environment(host: Host, lan: Lan, tmp_path: Path) -> None:
    """script= runs as libxl runs vif-bridge: `SCRIPT online` / `SCRIPT offline`, with
    XENBUS_PATH etc., and reports through hotplug-status."""
    record = tmp_path / "calls"
    script = tmp_path / "vif-test"
    script.write_text(f"""#!/bin/sh
echo "$1 type=$XENBUS_TYPE path=$XENBUS_PATH base=$XENBUS_BASE_PATH vif=$vif script=$script" >> {record}
bridge=$(xenstore-read "$XENBUS_PATH/bridge")
if [ "$1" = online ]; then
    ip link set dev "$vif" master "$bridge" up
    xenstore-write "$XENBUS_PATH/hotplug-status" connected
fi
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    lan.make_bridge()  # this script (as vif-bridge) expects the bridge to exist
    create(host, "scripted", [f"bridge={lan.bridge},script={script}"], f"ip={lan.ip(2)}")
    domid = int(host.list()["scripted"]["id"])
    wait_console(host, "scripted", r"vif 0 connected")
    assert tap.link_master(f"vif{domid}.0") == lan.bridge
    bp = f"/local/domain/0/backend/vif/{domid}/0"
    assert xs_read(host, f"{bp}/script") == str(script)
    lines = record.read_text().splitlines()
    assert lines == [f"online type=vif path={bp} base=/local/domain/0/backend "
                     f"vif=vif{domid}.0 script={script}"]
    host.xl("destroy", "scripted", check=True)
    assert record.read_text().splitlines()[1].split()[0] in ("offline", "remove")


def test_failing_hotplug_script_leaves_nothing(host: Host, lan: Lan, tmp_path: Path) -> None:
    script = tmp_path / "vif-fail"
    script.write_text("#!/bin/sh\nxenstore-write \"$XENBUS_PATH/hotplug-error\" "
                      "\"no such bridge\"\nexit 1\n")
    script.chmod(0o755)
    name = f"pxf{os.getpid() % 100000}"
    r = create(host, "failing", [f"script={script},vifname={name}"], check=False)
    assert r.returncode != 0 and "no such bridge" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    host.assert_clean()
    assert not tap.link_exists(name)

