"""Credit-scheduler shares: CPU-bound guests with mixed weights and caps, each guest's
share of the CPU the loads got against its entitlement, beside the same loads run as
plain host processes in cgroups set up the same way, in the same run.

The guests spin in ring 3 (hello.elf mode=spin, native speed). The entitlement divides
the CPU all the loads together actually got (the host is shared: other work takes some)
in proportion to the weights, no load getting more than its cap or one CPU (one vCPU
each), the excess going to the others (water-filling, as the credit scheduler does).

    .venv/bin/python bench/sched.py [--seconds 10] [--loads 256,256,512,1024:50,...]

A load is WEIGHT[:CAP]; the default is 6 loads mixing weights and caps.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "guests" / "build" / "hello.elf"
sys.path.insert(0, str(ROOT / "src"))

from pyxen.toolstack import cgroups  # noqa: E402

DEFAULT = "256,256,512,1024,512:30,256:20"


def entitlement(loads: list[tuple[int, int]], capacity: float) -> list[float]:
    """Water-filling: shares in CPUs, proportional to weight, each <= min(cap, 1 CPU)."""
    limit = [min(1.0, c / 100) if c else 1.0 for _, c in loads]
    share = [0.0] * len(loads)
    active = set(range(len(loads)))
    left = capacity
    while active and left > 1e-9:
        wsum = sum(loads[i][0] for i in active)
        fill = {i: left * loads[i][0] / wsum for i in active}
        over = {i for i in active if share[i] + fill[i] >= limit[i]}
        if not over:
            for i in active:
                share[i] += fill[i]
            break
        for i in over:
            left -= limit[i] - share[i]
            share[i] = limit[i]
        active -= over
    return share


def xl(root: Path, *args: str) -> str:
    env = dict(os.environ, PYXEN_RUNDIR=str(root))
    r = subprocess.run([sys.executable, "-m", "pyxen.cli.xl", *args], env=env,
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise SystemExit(f"xl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def guest_times(root: Path) -> dict[str, float]:
    """Each domain's CPU time, unrounded (hostd's list op; `xl list` prints 0.1 s)."""
    from pyxen.toolstack.client import HostdClient
    with HostdClient.connect(root, autostart=False) as c:
        return {d["name"]: float(d["cpu_time"]) for d in c.request("list")["domains"]}


def run_guests(loads: list[tuple[int, int]], seconds: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-sched-") as tmp:
        root = Path(tmp) / "run"
        try:
            for i, (w, c) in enumerate(loads):
                cfg = Path(tmp) / f"g{i}.cfg"
                cfg.write_text(f'name = "g{i}"\ntype = "pvh"\nkernel = "{HELLO}"\n'
                               f'memory = 16\ncmdline = "mode=spin"\ncpu_weight = {w}\n'
                               f"cap = {c}\n")
                xl(root, "create", str(cfg))
            deadline = time.monotonic() + 60
            while min(guest_times(root).get(f"g{i}", 0) for i in range(len(loads))) < 0.05:
                if time.monotonic() > deadline:
                    raise SystemExit("guests did not start spinning")
                time.sleep(0.2)
            t0 = guest_times(root)
            time.sleep(seconds)
            t1 = guest_times(root)
            return [t1[f"g{i}"] - t0[f"g{i}"] for i in range(len(loads))]
        finally:
            pid = (root / "hostd.pid")
            if pid.exists():
                os.kill(int(pid.read_text()), signal.SIGTERM)
                time.sleep(2)


def proc_cpu(pid: int) -> float:
    data = Path(f"/proc/{pid}/stat").read_text()
    f = data[data.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run_processes(loads: list[tuple[int, int]], seconds: float) -> list[float]:
    cg = cgroups.from_env(f"/bench-sched-{os.getpid()}")
    if cg is None:
        raise SystemExit("needs root and cgroups (v1 cpu+cpuset or v2)")
    cg.setup()
    procs = []
    try:
        for i, (w, c) in enumerate(loads):
            p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            procs.append(p)
            cg.create(i, p.pid, set(range(os.cpu_count() or 1)))
            cg.set_weight(i, w)
            cg.set_cap(i, c)
        time.sleep(0.5)
        t0 = [proc_cpu(p.pid) for p in procs]
        time.sleep(seconds)
        return [proc_cpu(p.pid) - a for p, a in zip(procs, t0, strict=True)]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cg.teardown()


def report(title: str, loads: list[tuple[int, int]], used: list[float], secs: float) -> None:
    total = sum(used)
    ent = entitlement(loads, total / secs)
    print(f"\n{title}: the loads got {total / secs:.2f} CPUs together")
    print(f"{'load':>5} {'weight':>6} {'cap':>4} {'got %CPU':>9} {'entitled':>9} {'diff':>7}")
    for i, ((w, c), u, e) in enumerate(zip(loads, used, ent, strict=True)):
        got = 100 * u / secs
        print(f"{i:>5} {w:>6} {c:>4} {got:>9.1f} {100 * e:>9.1f} {got - 100 * e:>+7.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--loads", default=DEFAULT)
    a = ap.parse_args()
    loads = []
    for item in a.loads.split(","):
        w, _, c = item.partition(":")
        loads.append((int(w), int(c or 0)))
    report("guests (pyxen domains)", loads, run_guests(loads, a.seconds), a.seconds)
    report("host processes in cgroups", loads, run_processes(loads, a.seconds), a.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
