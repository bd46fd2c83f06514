"""xl-disk-configuration parsing and Xen's virtual device numbers (pure logic)."""

from __future__ import annotations

import pytest

from pyxen.toolstack.xldisk import DiskSpecError, devid_to_vdev, parse_disk, vdev_to_devid


@pytest.mark.parametrize(("spec", "target", "fmt", "vdev", "mode", "cdrom"), [
    ("/img,raw,xvda,rw", "/img", "raw", "xvda", "w", False),
    ("/img,,xvdb", "/img", "raw", "xvdb", "w", False),
    ("phy:/dev/vg/guest,xvdc,w", "/dev/vg/guest", "raw", "xvdc", "w", False),
    ("raw:/img,hda,r", "/img", "raw", "hda", "r", False),
    ("/cd.iso,raw,hdc:cdrom,r", "/cd.iso", "raw", "hdc", "r", True),
    ("vdev=xvdd, access=ro, format=raw, target=/a,b c", "/a,b c", "raw", "xvdd", "r", False),
    ("/img,raw,sda,rw,devtype=cdrom", "/img", "raw", "sda", "r", True),
    (",raw,hdc:cdrom,r", "", "empty", "hdc", "r", True),
])
def test_specs(spec: str, target: str, fmt: str, vdev: str, mode: str, cdrom: bool) -> None:
    d = parse_disk(spec, "t.cfg")
    assert (d.target, d.format, d.vdev, d.mode, d.is_cdrom) == (target, fmt, vdev, mode, cdrom)


@pytest.mark.parametrize(("spec", "message"), [
    ("/img,xvda,w", "unknown value for format: near `xvda' in `/img,xvda,w'"),
    ("/img,raw,xvda,rw,x", "too many positional parameters: near `x'"),
    ("/img,raw,xvda,rx", "unknown value for access: near `rx'"),
    ("vdev=xvda", "no target specified (and device not removable) in `vdev=xvda'"),
    ("/img,raw", "no vdev specified in `/img,raw'"),
    ("foo=1,/img,raw,xvda", "unknown parameter: near `foo=1,'"),
    ("backendtype=nope,/img,raw,xvda", "unknown value for backendtype: near `nope'"),
    ("bogus:/img,xvda", "unknown deprecated disk prefix: near `bogus:/img'"),
    ("vdev=xvda,vdev=xvdb,target=/x", "vdev respecified: near `xvdb'"),
])
def test_errors_are_xls(spec: str, message: str) -> None:
    with pytest.raises(DiskSpecError) as e:
        parse_disk(spec, "t.cfg")
    assert str(e.value).startswith("t.cfg: config parsing error in disk specification: ")
    assert message in str(e.value)


@pytest.mark.parametrize(("vdev", "devid"), [
    ("xvda", 51712), ("xvdb", 51728), ("xvda1", 51713), ("xvdp15", 202 << 8 | 15 << 4 | 15),
    ("xvdq", 1 << 28 | 16 << 8), ("xvdaa", 1 << 28 | 26 << 8), ("xvda16", 1 << 28 | 16),
    ("d0p0", 51712), ("d3p2", 51762), ("hda", 768), ("hdb", 832), ("hdc", 5632),
    ("hdd1", 5697), ("sda", 2048), ("sdb2", 2066), ("51712", 51712),
])
def test_vbd_interface_numbers(vdev: str, devid: int) -> None:
    assert vdev_to_devid(vdev) == devid


@pytest.mark.parametrize("vdev", ["xvd", "hde", "sdq", "xvda0", "xvdA", "foo", "d1p256"])
def test_not_a_vdev(vdev: str) -> None:
    assert vdev_to_devid(vdev) is None


@pytest.mark.parametrize("vdev", ["xvda", "xvdb3", "xvdq", "xvdaa", "hda", "hdd1", "sdc"])
def test_round_trip(vdev: str) -> None:
    n = vdev_to_devid(vdev)
    assert n is not None and devid_to_vdev(n) == vdev
