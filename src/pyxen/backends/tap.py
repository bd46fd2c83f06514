"""The host side of a vif: a TAP device named as Xen names it (vifDOMID.DEVID), and the
bridge it joins (what Xen's vif-bridge hotplug script does, here through netlink with
pyroute2, never by running `ip`).

Linux's netback makes a kernel net device per vif; pyxen's netback lives in the domain's
VMM, so the device is a TAP whose file descriptors (one per queue, IFF_MULTI_QUEUE) the
VMM reads and writes. IFF_VNET_HDR puts a virtio_net_hdr in front of each frame, which
carries what netif.h's checksum and GSO flags mean to the host stack. The TAP is not
persistent: it goes away when the VMM closes it (detach, destroy, or the VMM dying).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterator
from typing import Any

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
IFNAMSIZ = 16

# struct virtio_net_hdr (linux/virtio_net.h), the 10-byte form
VNET_HDR = struct.Struct("<BBHHHH")  # flags gso_type hdr_len gso_size csum_start csum_offset
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4

# Xen's netback gives its vif this address so the bridge never picks it as its own.
VIF_HOST_MAC = "fe:ff:ff:ff:ff:ff"
DEFAULT_BRIDGE = "xenbr0"


class HostNetError(Exception):
    """A host networking step failed; the message is one line a person can act on."""


def valid_ifname(name: str) -> bool:
    return (0 < len(name) < IFNAMSIZ and name not in (".", "..")
            and all(c.isprintable() and c not in "/: \t" for c in name))


def open_tap(name: str, multi_queue: bool = False) -> int:
    """Create TAP device `name`; its non-blocking fd (the first queue). With multi_queue,
    add_queue() attaches more queues (one fd each) to the same device."""
    if not valid_ifname(name):
        raise HostNetError(f"invalid network interface name {name!r}")
    return _attach(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
                   | (IFF_MULTI_QUEUE if multi_queue else 0))


def add_queue(name: str) -> int:
    """One more queue of a multi-queue TAP device: its fd."""
    return _attach(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE)


def _attach(name: str, flags: int) -> int:
    ifr = struct.pack("16sH22x", name.encode(), flags)
    fd = -1
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR.size))
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        why = e.strerror or str(e)
        if e.errno == 16:  # EBUSY
            why = "a device of that name already exists"
        elif e.errno == 1:  # EPERM
            why = "creating TAP devices needs CAP_NET_ADMIN (run as root)"
        raise HostNetError(f"cannot create TAP device {name}: {why}") from None
    return fd


def set_offload(fd: int, csum: bool, tso4: bool, tso6: bool) -> None:
    """What the frontend takes in on its RX ring: partial checksums, TCP segments."""
    flags = (TUN_F_CSUM if csum else 0)
    if csum:
        flags |= (TUN_F_TSO4 if tso4 else 0) | (TUN_F_TSO6 if tso6 else 0)
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)


@contextlib.contextmanager
def _iproute() -> Iterator[Any]:
    try:
        from pyroute2 import IPRoute
    except ImportError as e:  # a dependency: only a broken install gets here
        raise HostNetError(f"pyroute2 is missing ({e}): reinstall pyxen") from None
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def bridge_attach(ifname: str, bridge: str, mtu: int | None = None) -> None:
    """vif-bridge online: create `bridge` if missing (up), then `ifname` joins it, up,
    with the bridge's MTU unless one is given (xl-network-configuration's mtu=)."""
    if not valid_ifname(bridge):
        raise HostNetError(f"invalid bridge name {bridge!r}")
    try:
        with _iproute() as ipr:
            dev = _index(ipr, ifname)
            if dev is None:
                raise HostNetError(f"network interface {ifname} does not exist")
            br = _index(ipr, bridge)
            if br is None:
                try:
                    ipr.link("add", ifname=bridge, kind="bridge")
                except Exception as e:  # noqa: BLE001 - created meanwhile by another vif
                    if _index(ipr, bridge) is None:
                        raise HostNetError(f"cannot create bridge {bridge}: {e}") from None
                br = _index(ipr, bridge)
                ipr.link("set", index=br, state="up")
            else:
                kind = _link_kind(ipr, br)
                if kind != "bridge":
                    raise HostNetError(f"{bridge} exists and is not a bridge ({kind or 'no kind'})")
            if mtu is None:
                mtu = _link_attr(ipr, br, "IFLA_MTU")
            ipr.link("set", index=dev, address=VIF_HOST_MAC)
            if mtu:
                ipr.link("set", index=dev, mtu=int(mtu))
            ipr.link("set", index=dev, master=br, state="up")
    except HostNetError:
        raise
    except Exception as e:  # noqa: BLE001 - netlink errors as one line
        raise HostNetError(f"cannot add {ifname} to bridge {bridge}: {e}") from None


def bridge_detach(ifname: str) -> None:
    """vif-bridge offline: leave the bridge and go down (a gone device is fine)."""
    with contextlib.suppress(Exception), _iproute() as ipr:
        dev = _index(ipr, ifname)
        if dev is not None:
            ipr.link("set", index=dev, master=0, state="down")


def link_exists(name: str) -> bool:
    with _iproute() as ipr:
        return _index(ipr, name) is not None


def link_master(name: str) -> str | None:
    """The bridge `name` is enslaved to, or None."""
    with _iproute() as ipr:
        dev = _index(ipr, name)
        if dev is None:
            return None
        master = _link_attr(ipr, dev, "IFLA_MASTER")
        if not master:
            return None
        return _link_attr(ipr, master, "IFLA_IFNAME")


def _link_attr(ipr: Any, index: int, attr: str) -> Any:
    links = ipr.get_links(index)
    return links[0].get_attr(attr) if links else None


def _link_kind(ipr: Any, index: int) -> str | None:
    info = _link_attr(ipr, index, "IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None
