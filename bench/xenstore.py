"""xenstored throughput from C clients linked against Debian's libxenstore.

    python bench/xenstore.py [--seconds 1.5] [--rounds 1] [--baseline-src DIR]

Builds two small C programs with gcc (bench/c/): ``xs_client`` (libxenstore: xs_read,
xs_write, xs_directory, xs_write + xs_read_watch, and transactions of start, read,
write, commit; 1 and 8 client processes, each with its own connection) and
``xs_echo``, an epoll server in C that frames the same messages and answers each with
one of the same size (plus the watch event after a WRITE once the connection sent
WATCH): the transport floor of a Unix socket on this machine. Prints ops/s for pyxen's
xenstored (its own process, journal on, as deployed), for the echo floor measured in
the same run, and the ratio, and each server's CPU time per operation (from /proc:
steadier than rates on a shared machine). ``--baseline-src`` also runs another checkout's
xenstored (e.g. main's src/) in the same run, for before/after figures.
The last line compares single-client writes/s with and without the journal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "bench" / "c"
MODES = (("read", "reads"), ("write", "writes"), ("directory", "directory"),
         ("watch", "watch fires"), ("tx", "transactions"))


def build(out: Path) -> tuple[Path, Path]:
    if shutil.which("gcc") is None:
        sys.exit("bench/xenstore.py: gcc is needed (and libxen-dev for libxenstore)")
    client, echo = out / "xs_client", out / "xs_echo"
    subprocess.run(["gcc", "-O2", "-o", str(client), str(C_DIR / "xs_client.c"),
                    "-lxenstore"], check=True)
    subprocess.run(["gcc", "-O2", "-o", str(echo), str(C_DIR / "xs_echo.c")], check=True)
    return client, echo


def _wait_socket(path: str) -> None:
    for _ in range(200):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no server on {path}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(client: Path, sock: str, mode: str, n: int, seconds: float,
            pid: int | None = None) -> tuple[float, float]:
    """(ops/s, server CPU microseconds per op)."""
    cpu0 = cpu_seconds(pid) if pid else 0.0
    r = subprocess.run([str(client), mode, str(n), str(seconds)], capture_output=True,
                       text=True, env=dict(os.environ, XENSTORED_PATH=sock),
                       timeout=seconds + 60)
    if r.returncode:
        raise RuntimeError(f"xs_client {mode} {n}: {r.stderr.strip()}")
    rate = float(r.stdout)
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    return rate, cpu / max(rate * seconds, 1) * 1e6


def _row(label: str, n: int, m: dict[str, tuple[float, float]], base: bool) -> str:
    r = {k: v[0] for k, v in m.items()}
    cols = "".join(f"{v:>13.0f}" for v in r.values())
    ratio = f"{r['xenstored'] / r['echo']:>9.2f}"
    if base:
        ratio += f"{r['xenstored'] / r['baseline']:>8.2f}"
    cpu = "".join(f"{v[1]:>8.1f}" for v in m.values())
    return f"{label:<14}{n:>8}{cols}{ratio}{'':>21}{cpu}"


def xenstored(src: Path, state: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.Popen([sys.executable, "-m", "pyxen.xenstore", "--state-dir", state,
                             *extra], env=env, stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the table")
    ap.add_argument("--baseline-src", type=Path,
                    help="another checkout's src/ to measure in the same run")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        client, echo_bin = build(Path(d))
        procs = [xenstored(ROOT / "src", f"{d}/xs"),
                 xenstored(ROOT / "src", f"{d}/xs-nj", "--no-persist"),
                 subprocess.Popen([str(echo_bin), f"{d}/echo.sock"])]
        servers = {"xenstored": f"{d}/xs/socket"}
        pids = {"xenstored": procs[0].pid, "echo": procs[2].pid}
        if a.baseline_src:
            procs.append(xenstored(a.baseline_src, f"{d}/base"))
            servers["baseline"] = f"{d}/base/socket"
            pids["baseline"] = procs[-1].pid
        servers["echo"] = f"{d}/echo.sock"
        try:
            for p in (*servers.values(), f"{d}/xs-nj/socket"):
                _wait_socket(p)
            print(f"pyxen xenstored vs a C echo of the same messages (transport floor), "
                  f"libxenstore C clients, Unix socket, {a.seconds:.1f} s per figure, "
                  f"{os.cpu_count()} CPUs")
            head = "".join(f"{k + '/s':>13}" for k in servers)
            extra = f"{'xs/base':>8}" if a.baseline_src else ""
            cpu_head = "".join(f"{k[:4] + ' us':>8}" for k in servers)
            print(f"{'operation':<14}{'clients':>8}{head}{'xs/echo':>9}{extra}"
                  f"   server CPU per op:{cpu_head}")
            runs: dict[tuple[str, int], list[dict[str, tuple[float, float]]]] = {}
            for rnd in range(a.rounds):
                if a.rounds > 1:
                    print(f"round {rnd + 1}")
                for mode, label in MODES:
                    for n in (1, 8):
                        m = {k: measure(client, s, mode, n, a.seconds, pids[k])
                             for k, s in servers.items()}
                        runs.setdefault((label, n), []).append(m)
                        print(_row(label, n, m, bool(a.baseline_src)), flush=True)
            if a.rounds > 1:
                print(f"median of {a.rounds} rounds")
                for (label, n), ms in runs.items():
                    med = {k: (statistics.median(m[k][0] for m in ms),
                               statistics.median(m[k][1] for m in ms)) for k in servers}
                    print(_row(label, n, med, bool(a.baseline_src)))
            nj = measure(client, f"{d}/xs-nj/socket", "write", 1, a.seconds)[0]
            wj = measure(client, servers["xenstored"], "write", 1, a.seconds)[0]
            print(f"journal cost: writes/s, 1 client: {wj:.0f} with journal, "
                  f"{nj:.0f} without ({wj / nj:.2f})")
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
