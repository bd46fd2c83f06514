#!/usr/bin/env python3
"""Event channel notification round trip guest -> dom0 -> guest, against a bare exit round
trip measured in the same run by the same guest.

Boots guests/build/evtchn_test.elf with `mode=loopback n=N` through `python -m pyxen.vmm`
and attaches pyxen's loopback backend (dom0's end, in the VMM) to the page and channel the
guest offers. The guest times, with its TSC, N ignored port writes (guest -> KVM -> user
space -> KVM_RUN) and then N PING requests: EVTCHNOP_send to dom0, the backend wakes on its
eventfd, answers in the granted page and notifies back, the guest waits in SCHEDOP_poll.

    python bench/evtchn.py [-n 2000] [-r 5]

Each figure is the median of -r runs (one VMM each); the ratio is the median of the
per-run ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(n: int) -> dict[str, float]:
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-") as tmp:
        ddir = Path(tmp) / "domains" / "1"
        ddir.mkdir(parents=True)
        cfg = ddir / "config.json"
        cfg.write_text(json.dumps({
            "name": "bench", "type": "pvh", "memory": 32, "vcpus": 1, "ramdisk": None,
            "kernel": str(ROOT / "guests" / "build" / "evtchn_test.elf"),
            "cmdline": f"mode=loopback n={n}"}))
        env = dict(os.environ, PYXEN_RUNDIR=tmp,
                   PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-m", "pyxen.vmm", "--domid", "1",
                                 "--config", str(cfg)], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        result = None
        try:
            assert proc.stdout is not None
            built = json.loads(proc.stdout.readline())
            if built.get("event") != "built":
                raise SystemExit(f"bench: {built.get('message')}")
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(ddir / "control.sock"))
            f = s.makefile("rwb")
            f.write(b'{"id": 1, "op": "unpause"}\n')
            f.flush()
            for raw in f:
                ev = json.loads(raw)
                line = ev.get("line", "") if ev.get("event") == "log" else ""
                m = re.search(r"loopback: port=(\d+) gref=(\d+)", line)
                if m:
                    req = {"id": 2, "op": "loopback_attach", "port": int(m.group(1)),
                           "gref": int(m.group(2))}
                    f.write(json.dumps(req).encode() + b"\n")
                    f.flush()
                m = re.search(r"exit_cycles=(\d+) rtt_cycles=(\d+) tsc_khz=(\d+)", line)
                if m:
                    result = [int(x) for x in m.groups()]
                if ev.get("id") == 2 and not ev.get("ok"):
                    raise SystemExit(f"bench: loopback_attach: {ev.get('error')}")
                if ev.get("event") == "shutdown":
                    break
            f.write(b'{"id": 3, "op": "destroy"}\n')
            f.flush()
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    if result is None:
        raise SystemExit("bench: the guest printed no result")
    exit_cycles, rtt_cycles, khz = result
    return {"exit_us": exit_cycles * 1000 / khz, "rtt_us": rtt_cycles * 1000 / khz}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="iterations per loop")
    ap.add_argument("-r", type=int, default=5, help="runs; figures are their medians")
    args = ap.parse_args()
    runs = [run(args.n) for _ in range(max(1, args.r))]
    exit_us = statistics.median(r["exit_us"] for r in runs)
    rtt_us = statistics.median(r["rtt_us"] for r in runs)
    ratio = statistics.median(r["rtt_us"] / r["exit_us"] for r in runs)
    print(f"median of {len(runs)} runs, n={args.n}")
    print(f"bare exit round trip (ignored port write):     {exit_us:9.1f} us")
    print(f"evtchn round trip guest -> dom0 -> guest:      {rtt_us:9.1f} us")
    print(f"notification round trip / bare exit ratio:     {ratio:9.2f}")


if __name__ == "__main__":
    main()
