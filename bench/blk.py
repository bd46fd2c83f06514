"""Disk throughput: the test guest's blkfront through pyxen's blkback, next to the host
reading and writing the same image with the same block sizes, in the same run.

The guest (guests/build/hello.elf mode=disk bench=1, guests/disk.c) writes then reads the
whole image sequentially in 64 KiB requests (indirect descriptors, 4 requests per kick),
then does N random 4 KiB reads, timing each phase with its TSC. The host then does the
same with os.pwrite/os.pread on the same file (page cache warm, as for the guest's
backend). blkback reports how long its ring threads were busy, which splits the guest's
time into "backend" and "the rest": the guest's kernel-mode code, which kvm_pvm emulates
at ~1M instructions/s here (shared/PLATFORM.md), and the exits/notifications.

    .venv/bin/python bench/blk.py [--mib 16] [--rand 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "guests" / "build" / "hello.elf"
BLOCK_SEQ = 64 << 10
BLOCK_RAND = 4 << 10


def tsc_hz() -> float:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text()) * 1e3
    except (OSError, ValueError):
        pass
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) * 1e6
    raise SystemExit("bench: cannot tell the TSC frequency")


def xl(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "pyxen.cli.xl", *args], env=env,
                       capture_output=True, text=True, timeout=300)
    if r.returncode:
        raise SystemExit(f"bench: xl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def guest_run(img: Path, rand: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pyxen-blkbench-") as tmp:
        env = dict(os.environ, PYXEN_RUNDIR=tmp)
        cfg = Path(tmp) / "b.cfg"
        cfg.write_text(f'name = "blkbench"\ntype = "pvh"\nkernel = "{HELLO}"\nmemory = 32\n'
                       f'cmdline = "mode=disk bench=1 rand={rand}"\n'
                       f'disk = [ "{img},raw,xvda,rw" ]\n')
        try:
            xl(env, "create", str(cfg))
            rx = re.compile(r"bench bytes (\d+) write_tsc (\d+) read_tsc (\d+) rand (\d+) "
                            r"rand_tsc (\d+)")
            deadline = time.monotonic() + 600
            while not (m := rx.search(xl(env, "dmesg"))):
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the guest did not finish")
                time.sleep(0.5)
            xl(env, "destroy", "blkbench")
            busy = None
            deadline = time.monotonic() + 30
            while busy is None and time.monotonic() < deadline:
                b = re.search(r"backend busy ([\d.]+) s", xl(env, "dmesg"))
                busy = float(b.group(1)) if b else None
                time.sleep(0.2)
        finally:
            pid = Path(tmp, "hostd.pid")
            if pid.exists():
                os.kill(int(pid.read_text()), 15)
                time.sleep(1)
    hz = tsc_hz()
    nbytes, wt, rt, n, rndt = (int(x) for x in m.groups())
    return {"bytes": nbytes, "write_s": wt / hz, "read_s": rt / hz, "rand": n,
            "rand_s": rndt / hz, "backend_s": busy or 0.0}


def host_run(img: Path, nbytes: int, rand: int) -> dict[str, float]:
    fd = os.open(img, os.O_RDWR)
    try:
        buf = os.urandom(BLOCK_SEQ)
        t0 = time.perf_counter()
        for off in range(0, nbytes, BLOCK_SEQ):
            os.pwrite(fd, buf, off)
        t1 = time.perf_counter()
        for off in range(0, nbytes, BLOCK_SEQ):
            os.pread(fd, BLOCK_SEQ, off)
        t2 = time.perf_counter()
        pages = nbytes // BLOCK_RAND
        rng = random.Random(1)
        for _ in range(rand):
            os.pread(fd, BLOCK_RAND, rng.randrange(pages) * BLOCK_RAND)
        t3 = time.perf_counter()
    finally:
        os.close(fd)
    return {"write_s": t1 - t0, "read_s": t2 - t1, "rand_s": t3 - t2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--rand", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    rows: dict[str, list[float]] = {k: [] for k in
                                    ("gw", "gr", "gi", "hw", "hr", "hi", "be", "gt")}
    with tempfile.TemporaryDirectory(prefix="pyxen-blkimg-") as d:
        img = Path(d) / "bench.img"
        with open(img, "wb") as f:
            f.truncate(a.mib << 20)
        for _ in range(a.runs):
            g = guest_run(img, a.rand)
            h = host_run(img, int(g["bytes"]), a.rand)
            mib = g["bytes"] / (1 << 20)
            rows["gw"].append(mib / g["write_s"])
            rows["gr"].append(mib / g["read_s"])
            rows["gi"].append(g["rand"] / g["rand_s"])
            rows["hw"].append(mib / h["write_s"])
            rows["hr"].append(mib / h["read_s"])
            rows["hi"].append(a.rand / h["rand_s"])
            rows["be"].append(g["backend_s"])
            rows["gt"].append(g["write_s"] + g["read_s"] + g["rand_s"])
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"blk bench: {a.mib} MiB image, {a.rand} random reads, median of {a.runs} runs")
    print(f"{'':28}{'guest':>12}{'host':>12}{'ratio':>9}")
    for label, g, h, unit in (("seq write 64 KiB (MiB/s)", "gw", "hw", ""),
                              ("seq read 64 KiB (MiB/s)", "gr", "hr", ""),
                              ("rand read 4 KiB (IOPS)", "gi", "hi", "")):
        print(f"{label:<28}{med[g]:>12.1f}{med[h]:>12.1f}{med[g] / med[h]:>8.3f}x{unit}")
    share = med["be"] / med["gt"] if med["gt"] else 0.0
    print(f"guest I/O time {med['gt']:.2f} s: backend (blkback ring threads) {med['be']:.2f} s "
          f"({share:.0%}); the rest is the guest's emulated kernel code and its exits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
