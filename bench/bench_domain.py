"""A domain for a benchmark: one test guest booted through the VMM's real entry point.

Both benches need the same thing: build the guests, start `python -m pyxen.vmm` in a
throw-away rundir, unpause it and read its control events until the guest shuts down.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[1]


class BenchDomain:
    def __init__(self, control: BinaryIO, pid: int) -> None:
        self.control = control
        self.pid = pid

    def cpu_times(self) -> tuple[float, float]:
        """User and system CPU seconds of the VMM process so far. While the guest loops,
        user time is the VMM's own work per exit (Python, C) and system time is KVM_RUN,
        where kvm_pvm emulates the guest's ring-0 instructions."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck

    def cpu_ns(self) -> int:
        """CPU nanoseconds of all the VMM's threads so far (schedstat: exact, where
        /proc/PID/stat counts clock ticks). Unlike wall time it does not grow when the
        host's CPUs are busy with other work, so it compares runs on a loaded machine."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                pass  # a thread that just ended
        return total

    def request(self, req: dict[str, Any]) -> None:
        """Send a control request; its reply arrives among the events."""
        self.control.write(json.dumps(req).encode() + b"\n")
        self.control.flush()

    def events(self) -> Iterator[dict[str, Any]]:
        """Control events and replies, up to and including the guest's shutdown."""
        for raw in self.control:
            ev = json.loads(raw)
            yield ev
            if ev.get("event") == "shutdown":
                return


def bare_exit(n: int, vcpus: int = 1, evtchn_elf: Path | None = None) -> dict[str, float]:
    """The C floor: guests/build/bare_exit runs hello.elf's bench loops (the same guest
    instructions) on KVM with a minimal C VMM. exit_us / hcall_us per iteration, and with
    vcpus > 1 the total hypercalls/s of all vCPUs at once. With evtchn_elf, also the event
    channel round trip floors of that guest's own request() code (evtchn_<mode>_us and
    evtchn_<mode>_cpu_us, mode sync / poll / thread: see guests/bare_exit.c), the guest
    instructions per round trip of the first two (evtchn_sync_insns, evtchn_poll_insns) and
    the SCHEDOP_polls per round trip of the third (evtchn_thread_polls)."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    cmd = [str(ROOT / "guests" / "build" / "bare_exit"), str(n), str(vcpus)]
    if evtchn_elf is not None:
        cmd.append(str(evtchn_elf))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    kv = dict(f.split("=") for f in out.split())
    res = {"exit_us": float(kv["exit_ns"]) / 1000, "hcall_us": float(kv["hcall_ns"]) / 1000,
           "exit_cpu_us": float(kv["exit_cpu_ns"]) / 1000,
           "hcall_cpu_us": float(kv["hcall_cpu_ns"]) / 1000}
    for k in [k for k in kv if k.startswith("evtchn_")]:
        if k.endswith("_ns"):
            res[k.removesuffix("_ns") + "_us"] = float(kv[k]) / 1000
        else:  # evtchn_{sync,poll}_insns, evtchn_thread_polls: per round trip
            res[k] = float(kv[k])
    if "hcalls_per_s" in kv:
        res["smp_hcalls_per_s"] = float(kv["hcalls_per_s"])
    return res


@contextmanager
def bench_domain(guest: str, cmdline: str, vcpus: int = 1) -> Iterator[BenchDomain]:
    """Boot guests/build/<guest>.elf with `cmdline`, unpaused; destroyed on exit."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-") as tmp:
        ddir = Path(tmp) / "domains" / "1"
        ddir.mkdir(parents=True)
        cfg = ddir / "config.json"
        cfg.write_text(json.dumps({
            "name": "bench", "type": "pvh", "memory": 32, "vcpus": vcpus, "ramdisk": None,
            "kernel": str(ROOT / "guests" / "build" / f"{guest}.elf"), "cmdline": cmdline}))
        env = dict(os.environ, PYXEN_RUNDIR=tmp,
                   PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-m", "pyxen.vmm", "--domid", "1",
                                 "--config", str(cfg)], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            assert proc.stdout is not None
            built = json.loads(proc.stdout.readline() or b"{}")
            if built.get("event") != "built":
                raise SystemExit(f"bench: {built.get('message', 'the VMM did not start')}")
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(ddir / "control.sock"))
                dom = BenchDomain(s.makefile("rwb"), proc.pid)
                dom.request({"id": 1, "op": "unpause"})
                yield dom
                dom.request({"id": 0, "op": "destroy"})
                proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
