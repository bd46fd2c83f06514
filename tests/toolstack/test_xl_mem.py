"""`xl mem-set` / `xl mem-max` with a guest balloon driver (hello.elf mode=balloond, which
balloons to xenstore memory/target): the guest gives memory back and takes it again,
`xl list` and the host (the VMM's guest RAM memfd) both show it, maxmem above memory
boots ballooned, and the limits are xl's and Xen's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from xlhost import HELLO, Host, needs_vmm, needs_xenstored, processes_of

pytestmark = [needs_vmm, needs_xenstored, pytest.mark.timeout(300)]


def _create(host: Host, tmp_path: Path, name: str, memory: int, maxmem: int) -> None:
    f = tmp_path / f"{name}.cfg"
    f.write_text("\n".join([f'name = "{name}"', 'type = "pvh"', f'kernel = "{HELLO}"',
                            f"memory = {memory}", f"maxmem = {maxmem}", "vcpus = 1",
                            'cmdline = "mode=balloond"']) + "\n")
    host.xl("create", str(f), check=True)
    host.wait_for(lambda: "balloond: target" in host.xl("dmesg").stdout,
                  "the balloon driver to reach its first target")


def _ram_blocks_mib(host: Host) -> float:
    """Host memory the VMM's guest RAM memfd holds (allocated blocks)."""
    pid = [p for p, cmd in processes_of(host.root) if "pyxen.vmm" in cmd][0]
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("/memfd:pyxen-d") and link.endswith("-ram (deleted)"):
            return os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512 / (1 << 20)
    raise AssertionError("no guest RAM memfd")


def _mem(host: Host, name: str) -> int:
    return int(host.list()[name]["mem"])


def _xs(host: Host, path: str) -> str:
    return host.xenstore("xenstore-read", path).stdout.strip()


def test_mem_set_balloons_the_guest_down_and_up(host: Host, tmp_path: Path) -> None:
    _create(host, tmp_path, "bd", 32, 32)
    assert _mem(host, "bd") == 32
    before = _ram_blocks_mib(host)
    dom0_before = _mem(host, "Domain-0")  # MemTotal less the domains' targets
    host.xl("mem-set", "bd", "16m", check=True)
    assert _xs(host, "/local/domain/1/memory/target") == "16384"
    host.wait_for(lambda: _mem(host, "bd") == 16, "xl list to show 16 MiB")
    after = _ram_blocks_mib(host)
    print(f"guest RAM memfd: {before:.1f} MiB before, {after:.1f} MiB after mem-set 16m")
    assert before - after >= 15.5, (before, after)
    assert "balloond: target 16384 KiB: moved -4096 pages" in host.xl("dmesg").stdout
    # the 16 MiB given back are the host's again in hostd's accounting (xl info's
    # free_memory is MemAvailable less the same targets: too noisy to assert here)
    assert _mem(host, "Domain-0") == dom0_before + 16
    host.xl("mem-set", "bd", "24576k", check=True)
    host.wait_for(lambda: _mem(host, "bd") == 24, "xl list to show 24 MiB")
    assert _ram_blocks_mib(host) <= before
    host.xl("destroy", "bd", check=True)
    host.assert_clean()


def test_maxmem_boots_ballooned_and_max_is_enforced(host: Host, tmp_path: Path) -> None:
    _create(host, tmp_path, "mx", 32, 48)
    assert _mem(host, "mx") == 32  # the other 16 MiB start in the balloon
    assert _xs(host, "/local/domain/1/memory/static-max") == str(48 * 1024)
    host.xl("mem-set", "mx", "40m", check=True)  # the guest grows into maxmem
    host.wait_for(lambda: _mem(host, "mx") == 40, "xl list to show 40 MiB")

    def refused(*args: str, msg: str) -> None:
        r = host.xl(*args)
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert msg in r.stderr, r.stderr

    refused("mem-set", "mx", "49m", msg="cannot set domid 1 dynamic max memory to : 49m "
            "(memory_dynamic_max must be less than or equal to memory_static_max")
    refused("mem-set", "mx", "12q", msg="invalid memory size: 12q")
    refused("mem-max", "mx", "1g", msg="cannot set domid 1 static max memory to : 1g")
    refused("mem-max", "mx", "36m", msg="memory_static_max must be greater than or equal "
            "to memory_dynamic_max")
    refused("mem-set", "nosuch", "16m", msg="nosuch is an invalid domain identifier")
    assert _xs(host, "/local/domain/1/memory/target") == str(40 * 1024)  # nothing changed
    assert _xs(host, "/local/domain/1/memory/static-max") == str(48 * 1024)
    assert _mem(host, "mx") == 40

    host.xl("mem-set", "mx", "24m", check=True)
    host.wait_for(lambda: _mem(host, "mx") == 24, "xl list to show 24 MiB")
    host.xl("mem-max", "mx", "28m", check=True)
    assert _xs(host, "/local/domain/1/memory/static-max") == str(28 * 1024)
    refused("mem-set", "mx", "40m", msg="memory_dynamic_max must be less than or equal")
    host.xl("mem-set", "mx", "28m", check=True)
    host.wait_for(lambda: _mem(host, "mx") == 28, "xl list to show 28 MiB")
    host.xl("destroy", "mx", check=True)
    host.assert_clean()


def test_max_below_what_a_guest_without_balloon_driver_holds(host: Host,
                                                              tmp_path: Path) -> None:
    """No balloon driver (mode=idle): mem-set only asks; the maximum reservation drops to
    the target anyway (libxl's enforce), below what the guest holds: Xen keeps the
    domain's pages and refuses it any more (the "ratchet"), and mem-max may then be set
    anywhere from the target up, even under the current reservation."""
    f = tmp_path / "idle.cfg"
    f.write_text("\n".join(['name = "idle"', 'type = "pvh"', f'kernel = "{HELLO}"',
                            "memory = 32", 'cmdline = "mode=idle"']) + "\n")
    host.xl("create", str(f), check=True)
    host.xl("mem-set", "idle", "16m", check=True)
    assert _xs(host, "/local/domain/1/memory/target") == "16384"
    host.xl("mem-max", "idle", "20m", check=True)  # below the 32 MiB it holds
    assert _mem(host, "idle") > 20  # 32 MiB less the RAM page the shared info replaced
    host.xl("debug-keys", "q", check=True)
    assert "max_pages=5120" in host.xl("dmesg", check=True).stdout
    r = host.xl("mem-max", "idle", "12m")
    assert r.returncode != 0 and "memory_static_max must be greater than or equal" in r.stderr
    host.xl("destroy", "idle", check=True)
    host.assert_clean()
