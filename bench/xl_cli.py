"""How fast `xl` answers the commands people run in loops (issue 12 part 2): `xl list`,
`xl domid`, `xl info`, `xl console` (attach, then Ctrl-] at once, through a pty), `xl
create -n` (the whole config path, printing libxl's JSON instead of creating), `xl pause`
and `xl unpause`, end to end, median of N runs, against `python -c pass` measured in the same run, interleaved
(this machine is shared: only same-run ratios mean anything).

    .venv/bin/python bench/xl_cli.py [-n RUNS]

The package is byte-compiled first (compileall), as an installed one is: this environment
sets PYTHONDONTWRITEBYTECODE, and without .pyc files every run would compile its modules.

Runs its own host (a fresh PYXEN_RUNDIR) with one idle guest (examples/idle.cfg) for
`xl console`; without /dev/kvm and the guests the console row is skipped.
"""

from __future__ import annotations

import argparse
import os
import pty
import signal
import statistics
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
XL = str(Path(PY).parent / "xl")


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child): CPU time is steadier on a busy host."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, cwd=REPO)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: rc {p.returncode}: {p.stderr.read().decode()}")
    p.stderr.close()
    return dt, ru.ru_utime + ru.ru_stime


def run_console(domain: str, env: dict[str, str]) -> tuple[float, float]:
    """xl console on a pty; Ctrl-] is waiting in its input, so it attaches and detaches."""
    master, slave = pty.openpty()
    t = time.perf_counter()
    p = subprocess.Popen([XL, "console", domain], env=env, stdin=slave,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    while termios.tcgetattr(slave)[3] & termios.ICANON:  # raw mode: attached
        if p.poll() is not None:
            break
        time.sleep(0.0005)
    os.write(master, b"\x1d")
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    rc = p.returncode = os.waitstatus_to_exitcode(status)
    os.close(master)
    os.close(slave)
    if rc != 0:
        raise SystemExit(f"xl console: rc {rc}: {p.stderr.read().decode().strip()}")
    p.stderr.close()
    return dt, ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=30)
    n = ap.parse_args().runs
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "src" / "pyxen")], check=True)
    root = Path(tempfile.mkdtemp(prefix="pyxen-bench-xl-"))
    env = dict(os.environ, PYXEN_RUNDIR=str(root))
    env.pop("PYXEN_XL_SLOW", None)
    slow_env = dict(env, PYXEN_XL_SLOW="1")
    try:
        run([XL, "list"], env)  # starts hostd
        have_guest = os.path.exists("/dev/kvm") and (REPO / "guests/build/hello.elf").exists()
        if have_guest:
            run([XL, "create", "examples/idle.cfg"], env)
        cases: dict[str, object] = {
            "python -c pass": lambda: run([PY, "-c", "pass"], env),
            "xl list": lambda: run([XL, "list"], env),
            "xl domid Domain-0": lambda: run([XL, "domid", "Domain-0"], env),
            "xl info": lambda: run([XL, "info"], env),
            "xl list (click path)": lambda: run([XL, "list"], slow_env),
            "xl create -n hello.cfg": lambda: run([XL, "create", "-n", "examples/hello.cfg"],
                                                  env),
            "xl create -n (click)": lambda: run([XL, "create", "-n", "examples/hello.cfg"],
                                                slow_env),
        }
        if have_guest:
            cases["xl console idle"] = lambda: run_console("idle", env)
            cases["xl pause idle"] = lambda: run([XL, "pause", "idle"], env)
            cases["xl unpause idle"] = lambda: run([XL, "unpause", "idle"], env)
            cases["xl pause (click)"] = lambda: run([XL, "pause", "idle"], slow_env)
            cases["xl unpause (click)"] = lambda: run([XL, "unpause", "idle"], slow_env)
        wall: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(n):
            for name, fn in cases.items():
                w, c = fn()  # type: ignore[operator]
                wall[name].append(w)
                cpu[name].append(c)
        base = statistics.median(wall["python -c pass"])
        cbase = statistics.median(cpu["python -c pass"])
        print(f"{'command':<24} {'wall ms':>8} {'min':>6} {'x pass':>7} {'cpu ms':>7} "
              f"{'x pass':>7}   (median of {n}, interleaved)")
        for name in cases:
            med, cmed = statistics.median(wall[name]), statistics.median(cpu[name])
            print(f"{name:<24} {med * 1e3:>8.1f} {min(wall[name]) * 1e3:>6.1f} "
                  f"{med / base:>7.2f} {cmed * 1e3:>7.1f} {cmed / cbase:>7.2f}")
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        # where the time goes: xl's imports (min of 5, -X importtime) and hostd's answers
        imports = []
        for _ in range(5):
            r = subprocess.run([PY, "-X", "importtime", "-c", "import pyxen.cli.xlmain"],
                               env=env, capture_output=True, text=True, check=True)
            last = r.stderr.strip().splitlines()[-1]
            imports.append(int(last.split("|")[1]) / 1e3)
        print(f"imports of the fast path (pyxen.cli.xlmain, cumulative): "
              f"{min(imports):.1f} ms (min of 5)")
        from pyxen.toolstack.client import HostdClient
        for op in ("ping", "list", "info"):
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                with HostdClient.connect(root, autostart=False) as c:
                    c.request(op)
                ts.append(time.perf_counter() - t)
            print(f"hostd {op:<5} connect + request + reply: "
                  f"{statistics.median(ts) * 1e3:.2f} ms (median)")
    finally:  # hostd destroys its domains; xenstored outlives hostd by design
        for pidfile in (root / "hostd.pid", root / "xenstored" / "pid"):
            try:
                pid = int(pidfile.read_text().strip() or 0)
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            for _ in range(200):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)


if __name__ == "__main__":
    main()
