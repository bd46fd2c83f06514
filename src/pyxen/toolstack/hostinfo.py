"""What xl list and xl info show: domain rows, Domain-0's row, host memory and
physinfo. A mixin of hostd.Hostd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from typing import Any

import pyxen

from .domain import (
    INFO_TIMEOUT_S,
    REASON_LETTERS,
    Domain,
    OpError,
)


class HostInfo:
    """Methods of hostd.Hostd (self is the Hostd)."""

    domains: dict[int, Domain]

    @staticmethod
    def meminfo() -> dict[str, int]:
        out: dict[str, int] = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, rest = line.partition(":")
                with contextlib.suppress(ValueError, IndexError):
                    out[k] = int(rest.split()[0])
        return out

    def free_memory_mib(self) -> int:
        mi = self.meminfo()
        avail = mi.get("MemAvailable", mi.get("MemFree", 0)) // 1024
        used = self.domains_memory_mib()
        return max(0, avail - used)

    def domains_memory_mib(self) -> int:
        """What the domains are given: each one's current target (xl mem-set moves it)."""
        from .memctl import target_kib
        return sum(target_kib(self, d) for d in self.domains.values()) // 1024

    async def _refresh(self, dom: Domain) -> None:
        if dom.ctl is None or dom.destroying:
            return
        with contextlib.suppress(OpError, asyncio.TimeoutError, Exception):
            reply = await dom.ctl.request("info", timeout=INFO_TIMEOUT_S)
            if reply.get("ok"):
                dom.info = reply
                st = reply.get("state")
                if st in ("running", "blocked", "paused") and not dom.handled_shutdown:
                    dom.state = st

    def state_letters(self, dom: Domain) -> str:
        st = dom.state
        letters = ["-"] * 6
        if st == "running":
            letters[0] = "r"
        elif st == "blocked":
            letters[1] = "b"
        elif st in ("paused", "building"):
            letters[2] = "p"
        elif st in ("shutdown", "crashed"):
            letters[3] = "s"
            letters[4] = REASON_LETTERS.get(dom.shutdown_reason or "crash", "?")
        elif st == "dying":
            letters[5] = "d"
        return "".join(letters)

    async def list_domains(self, wanted: list[Any] | None) -> list[dict[str, Any]]:
        if wanted:
            doms, seen = [], set()
            for ident in wanted:
                if str(ident) in ("0", "Domain-0"):
                    continue
                try:
                    d = self.find(ident)
                except OpError as e:  # xl's main_list: find_domain(), then domain_info()
                    if not str(ident).isdigit():
                        raise
                    raise OpError(f"Error: Domain '{ident}' does not exist.") from e
                if d.domid not in seen:
                    seen.add(d.domid)
                    doms.append(d)
            include_dom0 = any(str(i) in ("0", "Domain-0") for i in wanted)
        else:
            doms = sorted(self.domains.values(), key=lambda d: d.domid)
            include_dom0 = True
        await asyncio.gather(*(self._refresh(d) for d in doms))
        out = [self.dom0_entry()] if include_dom0 else []
        for d in sorted(doms, key=lambda d: d.domid):
            info = d.info
            out.append({
                "domid": d.domid, "name": d.config.name, "uuid": d.config.uuid,
                "memory": int(info.get("memory_kib", d.config.memory * 1024)) // 1024,
                "vcpus": int(info.get("vcpus", d.config.vcpus)),
                "state": self.state_letters(d), "status": d.state,
                "cpu_time": float(info.get("cpu_time", 0.0)),
                "shutdown_reason": d.shutdown_reason, "config": d.config.to_json(),
                "console": str(d.dir / "console.sock"),
            })
        return out

    def dom0_entry(self) -> dict[str, Any]:
        mi = self.meminfo()
        used = self.domains_memory_mib()
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)) / ticks
        return {"domid": 0, "name": "Domain-0", "uuid": "00000000-0000-0000-0000-000000000000",
                "memory": max(0, mi.get("MemTotal", 0) // 1024 - used),
                "vcpus": os.cpu_count() or 1, "state": "r-----", "status": "running",
                "cpu_time": busy, "shutdown_reason": None, "config": None}

    def host_info(self) -> list[list[str]]:
        """`xl info`'s keys in its order (output_nodeinfo, _physinfo, _xeninfo)."""
        u = os.uname()
        mi = self.meminfo()
        ncpu = os.cpu_count() or 1
        mhz = 0.0
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    mhz = float(line.split(":")[1])
                    break
        version = f"{pyxen.XEN_MAJOR}.{pyxen.XEN_MINOR}{pyxen.XEN_EXTRAVERSION}"
        kvm = "kvm" if os.path.exists("/dev/kvm") else "no /dev/kvm"
        rows = [
            ("host", u.nodename), ("release", u.release), ("version", u.version),
            ("machine", u.machine), ("nr_cpus", str(ncpu)), ("max_cpu_id", str(ncpu - 1)),
            ("nr_nodes", str(_nr_nodes())), ("cores_per_socket", str(ncpu)),
            ("threads_per_core", "1"), ("cpu_mhz", f"{mhz:.3f}"),
            ("hw_caps", ":".join(f"{w:08x}" for w in _hw_caps())),
            ("virt_caps", " hvm hap"),
            ("total_memory", str(mi.get("MemTotal", 0) // 1024)),
            ("free_memory", str(self.free_memory_mib())),
            ("sharing_freed_memory", "0"), ("sharing_used_memory", "0"),
            ("outstanding_claims", "0"), ("free_cpus", "0"),
            ("xen_major", str(pyxen.XEN_MAJOR)), ("xen_minor", str(pyxen.XEN_MINOR)),
            ("xen_extra", pyxen.XEN_EXTRAVERSION), ("xen_version", version),
            ("xen_caps", "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"),
            ("xen_scheduler", "credit"), ("xen_pagesize", "4096"),
            ("platform_params", "virt_start=0xffff800000000000"),
            ("xen_changeset", f"pyxen {pyxen.__version__}"),
            ("xen_commandline", f"pyxen hostd on {kvm}"),
            ("cc_compiler", f"Python {platform.python_version()}"),
            ("cc_compile_by", "pyxen"), ("cc_compile_domain", ""),
            ("cc_compile_date", ""), ("build_id", ""),
            ("xend_config_format", "4"),
        ]
        return [list(r) for r in rows]


def _hw_caps() -> list[int]:
    """Xen's physinfo hw_cap: the first 8 words of its featureset (CPUID 1.edx, 1.ecx,
    0x80000001.edx, 0x80000001.ecx, 0xd:1.eax, 7:0.ebx, 7:0.ecx, 0x80000007.edx), read
    through Linux's cpuid device (zeros where it is not there)."""
    leaves = [(0x1, 0, 3), (0x1, 0, 2), (0x80000001, 0, 3), (0x80000001, 0, 2), (0xD, 1, 0),
              (0x7, 0, 1), (0x7, 0, 2), (0x80000007, 0, 3)]
    try:
        fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return [0] * 8
    words = []
    try:
        for leaf, sub, reg in leaves:
            try:
                data = os.pread(fd, 16, leaf | (sub << 32))
                words.append(int.from_bytes(data[4 * reg:4 * reg + 4], "little"))
            except OSError:
                words.append(0)
    finally:
        os.close(fd)
    return words


def _nr_nodes() -> int:
    try:
        return max(1, len([p for p in os.listdir("/sys/devices/system/node")
                           if p.startswith("node") and p[4:].isdigit()]))
    except OSError:
        return 1
