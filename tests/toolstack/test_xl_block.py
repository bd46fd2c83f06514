"""PV disks end to end: `disk = [...]`, xl block-attach/-detach/-list, blkback in the
domain's VMM and the test guest's blkfront (guests/build/hello.elf mode=disk, see
guests/disk.c): the guest writes a pattern over each writable disk, reads it back and
prints the FNV-1a 64 of the contents, which must be the image's after shutdown."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from xlhost import HELLO, Host, needs_vmm, needs_xenstored

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(240)]

M64 = (1 << 64) - 1


def fnv64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def mix(x: int) -> int:  # guests/disk.c's pattern: word i of a disk is mix(seed ^ i)
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def cfg(tmp_path: Path, name: str, disks: list[str], extra: str = "") -> str:
    f = tmp_path / f"{name}.cfg"
    f.write_text("\n".join([
        f'name = "{name}"', 'type = "pvh"', f'kernel = "{HELLO}"', "memory = 32",
        f'cmdline = "mode=disk {extra}"',
        "disk = [ " + ", ".join(f"'{d}'" for d in disks) + " ]"]) + "\n")
    return str(f)


def image(path: Path, size: int, random: bool = False) -> Path:
    path.write_bytes(os.urandom(size) if random else b"")
    os.truncate(path, size)
    return path


def guest_line(host: Host, domid: int, pattern: str, timeout: float = 90) -> re.Match[str]:
    rx = re.compile(rf"^\(d{domid}\) pyxen disk: {pattern}$", re.M)
    try:
        return host.wait_for(lambda: rx.search(host.xl("dmesg", check=True).stdout),
                             f"d{domid}: {pattern}", timeout)
    except AssertionError as e:  # say what the guest did say
        said = [ln for ln in host.xl("dmesg").stdout.splitlines() if f"(d{domid})" in ln]
        raise AssertionError(f"{e}; d{domid} said last: {said[-8:]}") from None


def ls(host: Host, path: str) -> str:
    return host.xenstore("xenstore-ls", path).stdout


def test_disks_pattern_checksums_match_images_and_ro_refuses_writes(host: Host,
                                                                    tmp_path: Path) -> None:
    rw = image(tmp_path / "rw.img", 1 << 20)
    ro = image(tmp_path / "ro.img", 256 << 10, random=True)
    ro_before = ro.read_bytes()
    host.xl("create", cfg(tmp_path, "disky", [f"{rw},raw,xvda,rw",
                                              f"format=raw, vdev=xvdb, access=ro, target={ro}"]),
            check=True)
    rw_sum = int(guest_line(host, 1, r"vbd 51712 verify ok fnv64 ([0-9a-f]{16})").group(1), 16)
    assert guest_line(host, 1, r"vbd 51712 flush (\S+) discard (\S+)").groups() == ("0", "0")
    guest_line(host, 1, r"vbd 51728 write refused \(status -1\)")
    ro_sum = int(guest_line(host, 1, r"vbd 51728 read-only fnv64 ([0-9a-f]{16})").group(1), 16)

    # the nodes libxl and blkback write
    be = "/local/domain/0/backend/vbd/1/51712"
    for node, value in {"params": str(rw), "mode": "w", "type": "phy", "online": "1",
                        "state": "4", "frontend": "/local/domain/1/device/vbd/51712",
                        "frontend-id": "1", "device-type": "disk", "sectors": "2048",
                        "sector-size": "512", "physical-sector-size": "512", "info": "0",
                        "feature-flush-cache": "1", "feature-barrier": "1",
                        "feature-discard": "1", "feature-persistent": "1",
                        "feature-max-indirect-segments": "256",
                        "multi-queue-max-queues": "4", "max-ring-page-order": "4",
                        "hotplug-status": "connected"}.items():
        assert host.xenstore("xenstore-read", f"{be}/{node}").stdout.strip() == value, node
    fe = "/local/domain/1/device/vbd/51712"
    for node, value in {"backend": be, "backend-id": "0", "state": "4",
                        "virtual-device": "51712", "device-type": "disk",
                        "protocol": "x86_64-abi", "feature-persistent": "1"}.items():
        assert host.xenstore("xenstore-read", f"{fe}/{node}").stdout.strip() == value, node
    assert host.xenstore("xenstore-read", "/local/domain/0/backend/vbd/1/51728/info"
                         ).stdout.strip() == "4"  # VDISK_READONLY
    assert host.xenstore("xenstore-ls", "-p", be).returncode == 0

    host.xl("shutdown", "-w", "disky", check=True)
    data = rw.read_bytes()
    assert fnv64(data) == rw_sum
    seed = (1 << 32) ^ 51712
    assert int.from_bytes(data[:8], "little") == mix(seed ^ 0)
    assert data[-4096:] == bytes(4096)  # the discarded tail
    assert ro.read_bytes() == ro_before and fnv64(ro_before) == ro_sum
    host.wait_for(lambda: "disky" not in host.list(), "on_poweroff=destroy")
    assert "vbd" not in ls(host, "/local/domain/0")
    host.assert_clean()


def test_hot_attach_and_detach_are_seen_by_the_guest(host: Host, tmp_path: Path) -> None:
    a = image(tmp_path / "a.img", 256 << 10)
    b = image(tmp_path / "b.img", 256 << 10)
    host.xl("create", cfg(tmp_path, "hot", [f"{a},raw,xvda,rw"]), check=True)
    guest_line(host, 1, r"vbd 51712 verify ok fnv64 \w+")
    r = host.xl("block-attach", "hot", f"{b},raw,xvdb,w", check=True)
    assert r.stdout == ""
    b_sum = int(guest_line(host, 1, r"vbd 51728 verify ok fnv64 (\w+)").group(1), 16)
    rows = host.xl("block-list", "hot", check=True).stdout.splitlines()
    assert rows[0].split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
    assert [r.split()[0] for r in rows[1:]] == ["51712", "51728"]
    assert all(r.split()[1:4] == ["0", "1", "4"] for r in rows[1:])
    assert rows[2].split()[6] == "/local/domain/0/backend/vbd/1/51728"
    # the same vdev twice: refused, nothing changes
    r = host.xl("block-attach", "hot", f"{b},raw,xvdb,w")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    host.xl("block-detach", "hot", "xvdb", check=True)
    guest_line(host, 1, r"vbd 51728 gone")
    assert host.xenstore("xenstore-read", "/local/domain/0/backend/vbd/1/51728/state"
                         ).returncode != 0
    assert "51728" not in ls(host, "/local/domain/1/device")
    assert "51728" not in ls(host, "/libxl/1")
    assert [r.split()[0] for r in host.xl("block-list", "hot", check=True).stdout
            .splitlines()[1:]] == ["51712"]
    r = host.xl("block-detach", "hot", "xvdz")
    assert r.returncode != 0 and r.stderr.strip() == "Error: Device xvdz not connected."
    assert fnv64(b.read_bytes()) == b_sum
    host.xl("destroy", "hot", check=True)
    assert "vbd" not in ls(host, "/local/domain/0")
    host.assert_clean()


def test_multi_queue_multi_page_rings_and_the_x86_32_abi(host: Host, tmp_path: Path) -> None:
    a = image(tmp_path / "a.img", 512 << 10)
    host.xl("create", cfg(tmp_path, "mq", [f"{a},raw,xvda,rw"],
                          "queues=2 ring_order=2 abi=32"), check=True)
    guest_line(host, 1, r"vbd 51712 connected: 1024 sectors of 512 bytes, info 0, "
                        r"2 queue\(s\) of 4 page\(s\), x86_32-abi, .*")
    s = int(guest_line(host, 1, r"vbd 51712 verify ok fnv64 (\w+)").group(1), 16)
    log = host.xl("dmesg", check=True).stdout
    assert "vbd-1-51712: connected: 1024 sectors, 2 queue(s) of 4 page(s), x86_32-abi" in log
    fe = "/local/domain/1/device/vbd/51712"
    assert host.xenstore("xenstore-read", f"{fe}/multi-queue-num-queues").stdout.strip() == "2"
    assert host.xenstore("xenstore-read", f"{fe}/queue-1/ring-ref3").returncode == 0
    host.xl("shutdown", "-w", "mq", check=True)
    assert fnv64(a.read_bytes()) == s
    host.assert_clean()


def test_hostile_frontend_is_refused_and_other_domains_keep_going(host: Host,
                                                                   tmp_path: Path) -> None:
    bad = image(tmp_path / "bad.img", 256 << 10)
    good = image(tmp_path / "good.img", 1 << 20)
    host.xl("create", cfg(tmp_path, "evil", [f"{bad},raw,xvda,rw"], "hostile=1"), check=True)
    host.xl("create", cfg(tmp_path, "nice", [f"{good},raw,xvda,rw"]), check=True)
    for what in ("past-end", "straddling-end", "huge-sector", "too-many-segments",
                 "zero-segments", "bad-sect-range", "last-sect-8", "bad-gref",
                 "ungranted-gref", "indirect-too-many"):
        guest_line(host, 1, f"hostile {what} -1")
    guest_line(host, 1, "hostile bad-op -2")  # BLKIF_RSP_EOPNOTSUPP
    guest_line(host, 1, "hostile then-good 0")
    guest_line(host, 1, r"hostile never-consumed answered 128 of 128")
    guest_line(host, 1, "hostile ring-still-usable 0")
    guest_line(host, 1, "hostile producer-beyond-ring answered 0")
    s = int(guest_line(host, 2, r"vbd 51712 verify ok fnv64 (\w+)").group(1), 16)
    log = host.xl("dmesg", check=True).stdout
    assert "bogus ring requests" in log and "halting ring processing" in log
    assert host.list()["evil"]["state"] in ("r-----", "-b----")  # its VMM lives on
    host.xl("shutdown", "-w", "nice", check=True)
    assert fnv64(good.read_bytes()) == s
    host.xl("destroy", "evil", check=True)
    host.assert_clean()


@pytest.mark.parametrize(("spec", "error"), [
    ("{img},xvda,w", "config parsing error in disk specification: unknown value for format: "
                     "near `xvda' in `{img},xvda,w'"),
    ("{img},raw,xvda,rw,extra", "too many positional parameters: near `extra'"),
    ("{img},raw,xvda,rx", "unknown value for access: near `rx'"),
    ("{img},raw,xvd0,rw", "Invalid or unsupported virtual disk identifier xvd0"),
    ("{img},qcow2,xvda,rw", "format=qcow2 is not supported"),
    ("{tmp}/missing.img,raw,xvda,rw", "Disk vdev=xvda failed to stat: {tmp}/missing.img: "
                                      "No such file or directory"),
])
def test_bad_disk_entries_are_refused_with_nothing_created(host: Host, tmp_path: Path,
                                                           spec: str, error: str) -> None:
    img = image(tmp_path / "x.img", 4096)
    f = cfg(tmp_path, "bad", [spec.format(img=img, tmp=tmp_path)])
    r = host.xl("create", f)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert error.format(img=img, tmp=tmp_path) in r.stderr
    assert list(host.list()) == ["Domain-0"]
    assert "vbd" not in ls(host, "/local/domain/0")


def test_duplicate_vdev_is_refused(host: Host, tmp_path: Path) -> None:
    img = image(tmp_path / "x.img", 4096)
    r = host.xl("create", cfg(tmp_path, "dup", [f"{img},raw,xvda,rw", f"{img},raw,51712,r"]))
    assert r.returncode != 0 and "vdev 51712 is the same device (51712) as xvda" in r.stderr
    assert list(host.list()) == ["Domain-0"]
