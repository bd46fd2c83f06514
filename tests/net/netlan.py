"""Helpers of the network suite (its fixtures are in conftest.py): markers, the
real-guest image, and the LAN the tests build (bridge, namespace, veth)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass

import pytest
from xlhost import REPO

NETGUEST = REPO / "guests" / "build" / "netguest.elf"

needs_root_net = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
    reason="needs root and /dev/net/tun (TAP devices, bridges, network namespaces)")
needs_guest = pytest.mark.skipif(
    not (NETGUEST.exists() and os.path.exists("/dev/kvm")),
    reason="needs guests/build/netguest.elf (make -C guests) and /dev/kvm")


@dataclass
class Lan:
    """A bridge (made by pyxen's first vif on it), and a namespace plugged into it by a
    veth pair: the 'host' side of the tests' pings, with addresses 10.S.0.1 and 10.S.1.1."""

    ns: str
    bridge: str
    veth: str
    subnet: int

    def ip(self, host_part: int, net: int = 0) -> str:
        return f"10.{self.subnet}.{net}.{host_part}"

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def ping(self, ip: str, count: int = 3) -> subprocess.CompletedProcess[str]:
        return self.run("ping", "-c", str(count), "-W", "5", "-i", "0.3", ip)

    def make_bridge(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=self.bridge)[0], state="up")

    def plug(self) -> None:
        """The namespace's veth joins the bridge (which must exist by then)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            br = ipr.link_lookup(ifname=self.bridge)[0]
            dev = ipr.link_lookup(ifname=self.veth)[0]
            ipr.link("set", index=dev, master=br, state="up")


@contextlib.contextmanager
def make_lan():  # noqa: ANN201
    from pyroute2 import IPRoute, NetNS, netns

    tag = os.getpid() % 100000
    lan = Lan(ns=f"pxnet{tag}", bridge=f"pxbr{tag}", veth=f"pxve{tag}",
              subnet=100 + tag % 150)
    inner = f"pxvi{tag}"
    netns.create(lan.ns)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=lan.veth, kind="veth", peer=inner)
            ipr.link("set", index=ipr.link_lookup(ifname=inner)[0], net_ns_fd=lan.ns)
        with NetNS(lan.ns) as ns:
            idx = ns.link_lookup(ifname=inner)[0]
            ns.addr("add", index=idx, address=lan.ip(1), prefixlen=24)
            ns.addr("add", index=idx, address=lan.ip(1, 1), prefixlen=24)
            ns.link("set", index=idx, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield lan
    finally:
        with contextlib.suppress(Exception), IPRoute() as ipr:
            for name in (lan.veth, lan.bridge):
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)
        with contextlib.suppress(Exception):
            netns.remove(lan.ns)
