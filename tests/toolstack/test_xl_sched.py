"""Resource control with real guests: credit weights and caps on cgroups, vCPU pinning,
cpupools, vcpu-set (docs/sched.md). CPU-bound guests spin in ring 3 (hello mode=spin),
which runs natively."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from xlhost import HELLO, Host, needs_vmm, needs_xenstored

from pyxen.toolstack import cgroups, cpulist
from pyxen.toolstack.client import HostdClient

pytestmark = [needs_vmm, needs_xenstored]

CG = Path("/sys/fs/cgroup")
needs_cgv1 = pytest.mark.skipif(not (CG / "cpu" / "cpu.shares").exists(),
                                reason="needs cgroup v1 cpu and cpuset (this host's)")


def cfg(tmp_path: Path, name: str, mode: str = "spin", **extra: str | int) -> str:
    lines = [f'name = "{name}"', 'type = "pvh"', f'kernel = "{HELLO}"', "memory = 32",
             f'cmdline = "mode={mode}"']
    lines += [f"{k} = {v}" if isinstance(v, int) else f'{k} = "{v}"'
              for k, v in extra.items()]
    f = tmp_path / f"{name}.cfg"
    f.write_text("\n".join(lines) + "\n")
    return str(f)


def dgroup(host: Host, ctrl: str, domid: str) -> Path:
    return CG / ctrl / cgroups.base_name(host.root) / f"d{domid}"


def cpu_time(host: Host, name: str) -> float:
    return float(host.list()[name]["time"])


def vcpu_rows(host: Host, *doms: str) -> list[list[str]]:
    r = host.xl("vcpu-list", *doms, check=True)
    lines = r.stdout.splitlines()
    assert lines[0] == ("Name                                ID  VCPU   CPU State   Time(s) "
                        "Affinity (Hard / Soft)")
    return [ln.split() for ln in lines[1:]]


def thread_affinity(host: Host, dom: str) -> dict[int, str]:
    """vCPU -> Cpus_allowed_list of its host thread (ids from hostd's vcpu_list)."""
    with HostdClient.connect(host.root, autostart=False) as c:
        rows = c.request("vcpu_list", domains=[dom])["vcpus"]
    out = {}
    for v in rows:
        for line in Path(f"/proc/{v['tid']}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[v["vcpu"]] = line.split()[1]
    return out


@needs_cgv1
def test_sched_credit_weight_cap_in_cgroups_and_errors(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "w1", mode="idle", cpu_weight=512, cap=50), check=True)
    domid = host.list()["w1"]["id"]
    g = dgroup(host, "cpu", domid)
    assert (g / "cpu.shares").read_text().strip() == "2048"
    assert (g / "cpu.cfs_quota_us").read_text().strip() == "50000"
    out = host.xl("sched-credit", check=True).stdout.splitlines()
    assert out[0] == "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us"
    assert out[1] == "Name                                ID Weight  Cap"
    assert out[2].split() == ["Domain-0", "0", "256", "0"]
    assert out[3].split() == ["w1", domid, "512", "50"]
    host.xl("sched-credit", "-d", "w1", "-w", "1024", "-c", "0", check=True)
    assert (g / "cpu.shares").read_text().strip() == "4096"
    assert (g / "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert host.xl("sched-credit", "-d", "w1", check=True).stdout.splitlines()[1].split() \
        == ["w1", domid, "1024", "0"]
    for args, msg in ((("-d", "w1", "-w", "0"), "Cpu weight out of range"),
                      (("-d", "w1", "-c", "101"), "valid range is from 0 to 100"),
                      (("-d", "nope", "-w", "5"), "nope is an invalid domain identifier"),
                      (("-w", "5"), "Must specify a domain."),
                      (("-s", "-t", "0"), "Time slice out of range")):
        r = host.xl("sched-credit", *args)
        assert r.returncode != 0 and msg in r.stderr and len(r.stderr.splitlines()) == 1, r
    assert (g / "cpu.shares").read_text().strip() == "4096"
    host.xl("sched-credit", "-s", "-t", "10", "-r", "500", check=True)
    assert host.xl("sched-credit", "-s", check=True).stdout.strip() == \
        "Cpupool Pool-0: tslice=10ms ratelimit=500us migration-delay=0us"
    assert host.xl("sched-credit2", "-s").returncode != 0  # Pool-0 is credit
    host.xl("destroy", "w1", check=True)
    assert not g.exists() and not dgroup(host, "cpuset", domid).exists()
    host.stop()
    assert not g.parent.exists() and not (CG / "cpuset" / g.parent.name).exists()


def test_cfg_errors_change_nothing(host: Host, tmp_path: Path) -> None:
    for extra, msg in (({"cpu_weight": 0}, "Cpu weight out of range"),
                       ({"cap": 300}, "valid range is from 0 to 100"),
                       ({"cpus": "7-9"}, "illegal"),
                       ({"pool": "nope"}, "unknown cpupool 'nope'")):
        r = host.xl("create", cfg(tmp_path, "bad", **extra))
        assert r.returncode != 0 and msg in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    host.assert_clean()


def test_vcpu_pin_shows_in_list_and_thread_affinity(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "p1", mode="idle", vcpus=2, cpus="1", cpus_soft="0"),
            check=True)
    rows = vcpu_rows(host, "p1")
    assert [(r[2], r[-3], r[-1]) for r in rows] == [("0", "1", "0"), ("1", "1", "0")]
    assert rows[1][3:6] == ["-", "--p", "0.0"]  # vCPU 1 never brought up: costs nothing
    assert thread_affinity(host, "p1") == {0: "1", 1: "1"}
    host.xl("vcpu-pin", "p1", "0", "0", check=True)
    host.xl("vcpu-pin", "p1", "1", "all", "1", check=True)
    rows = vcpu_rows(host, "p1")
    assert [(r[-3], r[-1]) for r in rows] == [("0", "0"), ("all", "1")]
    assert thread_affinity(host, "p1") == {0: "0", 1: "0-1"}
    for args in (("p1", "5", "0"), ("p1", "0", "9"), ("nope", "0", "0")):
        r = host.xl("vcpu-pin", *args)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r
    assert thread_affinity(host, "p1") == {0: "0", 1: "0-1"}


@needs_cgv1
def test_cpupool_confines_its_domains(host: Host, tmp_path: Path) -> None:
    r = host.xl("cpupool-create", 'name="cp"', 'cpus="1"')
    assert r.returncode != 0 and "isn't free" in r.stderr  # Pool-0 owns every CPU
    host.xl("cpupool-cpu-remove", "Pool-0", "1", check=True)
    host.xl("cpupool-create", 'name="cp"', 'cpus="1"', check=True)
    out = host.xl("cpupool-list", "-c", check=True).stdout.splitlines()
    assert out == ["Name               CPU list", "Pool-0             0", "cp                 1"]
    host.xl("create", cfg(tmp_path, "c1", pool="cp"), check=True)
    domid = host.list()["c1"]["id"]
    assert (dgroup(host, "cpuset", domid) / "cpuset.cpus").read_text().strip() == "1"
    out = host.xl("cpupool-list", check=True).stdout.splitlines()
    assert out[0] == "Name               CPUs   Sched     Active   Domain count"
    assert out[2].split() == ["cp", "1", "credit", "y", "1"]
    # it spins: over a while, its vCPU thread is only ever seen on CPU 1
    seen = set()
    for _ in range(20):
        seen |= {r[3] for r in vcpu_rows(host, "c1") if r[2] == "0"}
        time.sleep(0.05)
    assert seen == {"1"}, seen
    assert thread_affinity(host, "c1") == {0: "1"}
    host.xl("vcpu-pin", "c1", "0", "all", check=True)  # hard "all" still within the pool
    assert thread_affinity(host, "c1") == {0: "1"}
    r = host.xl("vcpu-pin", "c1", "0", "0")
    assert r.returncode != 0 and "not in cpupool cp" in r.stderr
    for args, msg in ((("cpupool-destroy", "cp"), "still in it"),
                      (("cpupool-migrate", "c1", "nope"), "unknown cpupool 'nope'"),
                      (("cpupool-cpu-remove", "cp", "1"), "last cpu"),
                      (("cpupool-rename", "cp", "Pool-0"), "already exists")):
        r = host.xl(*args)
        assert r.returncode != 0 and msg in r.stderr, r
    host.xl("cpupool-migrate", "c1", "Pool-0", check=True)
    assert (dgroup(host, "cpuset", domid) / "cpuset.cpus").read_text().strip() == "0"
    host.xl("cpupool-rename", "cp", "cq", check=True)
    host.xl("cpupool-destroy", "cq", check=True)
    host.xl("cpupool-cpu-add", "Pool-0", "1", check=True)
    assert (dgroup(host, "cpuset", domid) / "cpuset.cpus").read_text().strip() == "0-1"


@needs_cgv1
def test_weights_256_512_on_one_cpu_share_1_to_2(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "a", cpus="0"), check=True)
    host.xl("create", cfg(tmp_path, "b", cpus="0", cpu_weight=512), check=True)
    host.wait_for(lambda: cpu_time(host, "a") > 0.2 and cpu_time(host, "b") > 0.2,
                  "both guests spinning")
    a0, b0 = cpu_time(host, "a"), cpu_time(host, "b")
    time.sleep(4)
    a, b = cpu_time(host, "a") - a0, cpu_time(host, "b") - b0
    print(f"weights 256/512 on one CPU: {a:.2f} s / {b:.2f} s = 1:{b / a:.2f}")
    assert 1.5 <= b / a <= 2.7, (a, b)


@needs_cgv1
def test_cap_25_is_a_ceiling(host: Host, tmp_path: Path) -> None:
    host.xl("create", cfg(tmp_path, "c", cap=25), check=True)
    host.wait_for(lambda: cpu_time(host, "c") > 0.1, "the guest spinning")
    t0, w0 = cpu_time(host, "c"), time.monotonic()
    time.sleep(4)
    share = (cpu_time(host, "c") - t0) / (time.monotonic() - w0)
    print(f"cap 25: {share * 100:.1f} % of one CPU")
    assert 0.05 < share <= 0.27, share


def test_vcpu_set_hotplugs_a_vcpu_the_guest_sees(host: Host, tmp_path: Path) -> None:
    """hello mode=hotplug watches cpu/N/availability and brings vCPUs up and down."""
    host.xl("create", cfg(tmp_path, "v", mode="hotplug", vcpus=1, maxvcpus=2), check=True)
    domid = host.list()["v"]["id"]

    def log() -> str:
        return host.xl("dmesg", check=True).stdout

    def avail(i: int) -> str:
        return host.xenstore("xenstore-read",
                             f"/local/domain/{domid}/cpu/{i}/availability").stdout.strip()

    host.wait_for(lambda: "pyxen hello: hotplug ready" in log(), "the guest's watch")
    assert (avail(0), avail(1)) == ("online", "offline")
    assert vcpu_rows(host, "v")[1][3:5] == ["-", "--p"]
    host.xl("vcpu-set", "v", "2", check=True)
    assert (avail(0), avail(1)) == ("online", "online")
    host.wait_for(lambda: f"(d{domid}) pyxen hello: vcpu 1 is up (cpuid vcpu id 1)" in log(),
                  "vCPU 1 running guest code")
    assert "pyxen hello: vcpu 1 online" in log()
    assert vcpu_rows(host, "v")[1][4] in ("-b-", "r--")
    assert host.list()["v"]["vcpus"] == "2"
    r = host.xl("vcpu-set", "-i", "v", "3")
    assert r.returncode != 0 and "maxcpus is 2" in r.stderr and avail(1) == "online"
    host.xl("vcpu-set", "v", "1", check=True)
    host.wait_for(lambda: "pyxen hello: vcpu 1 offline" in log(), "vCPU 1 taken down")
    host.wait_for(lambda: host.list()["v"]["vcpus"] == "1", "xl list showing 1 vCPU")
    assert vcpu_rows(host, "v")[1][4] == "--p"
    host.xl("vcpu-set", "v", "2", check=True)  # up again: no second VCPUOP_initialise
    host.wait_for(lambda: log().count("pyxen hello: vcpu 1 online") == 2, "vCPU 1 back")
    host.wait_for(lambda: host.list()["v"]["vcpus"] == "2", "xl list showing 2 vCPUs")


def test_cgroup_v2_backend_through_hostd(host: Host, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """hostd on a (fake) cgroup v2 tree: cpu.weight, cpu.max, cpuset.cpus per domain."""
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    monkeypatch.setenv("PYXEN_CGROUP_ROOT", str(root))
    host.xl("create", cfg(tmp_path, "v2", mode="idle", cpu_weight=512, cap=50), check=True)
    domid = host.list()["v2"]["id"]
    g = root / cgroups.base_name(host.root) / f"d{domid}"
    assert (g / "cpu.weight").read_text() == "200"
    assert (g / "cpu.max").read_text() == "50000 100000"
    assert (g / "cpuset.cpus").read_text() == cpulist.fmt(set(range(os.cpu_count() or 1)))
    assert (g / "cgroup.procs").read_text().isdigit()
    host.xl("sched-credit", "-d", "v2", "-c", "0", "-w", "128", check=True)
    assert (g / "cpu.max").read_text() == "max 100000"
    assert (g / "cpu.weight").read_text() == "50"
    host.xl("destroy", "v2", check=True)
    assert not g.exists()
    host.stop()
    assert not g.parent.exists()
