#!/usr/bin/env python3
"""Hypercalls per second from a guest loop, against a bare exit loop in the same run.

Boots guests/build/hello.elf with `mode=bench n=N` through `python -m pyxen.vmm`. The guest
first does N port writes that pyxen ignores (the bare exit round trip: guest -> KVM ->
user space -> KVM_RUN), then N xen_version(XENVER_version) hypercalls through the
hypercall page (exit + register decode + dispatch + %rax write-back). Each phase is timed
between the guest's console markers as they arrive in the log.

    python bench/hypercall.py [-n 20000] [-r 5]

Each figure is the median of -r runs (one VMM each); the ratio is the median of the
per-run ratios, so a noisy run does not pair one run's baseline with another's figure.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_domain import bench_domain


def run(n: int) -> dict[str, float]:
    marks: dict[str, float] = {}
    with bench_domain("hello", f"mode=bench n={n}") as dom:
        for ev in dom.events():
            now = time.perf_counter()
            if ev.get("event") == "log" and "pyxen bench: " in ev["line"]:
                marks[ev["line"].split("pyxen bench: ", 1)[1].split(" n=")[0]] = now
    exits = n / (marks["exit loop done"] - marks["exit loop start"])
    calls = n / (marks["hypercall loop done"] - marks["hypercall loop start"])
    return {"exits_per_s": exits, "hypercalls_per_s": calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="iterations per loop")
    ap.add_argument("-r", type=int, default=5, help="runs; figures are their medians")
    args = ap.parse_args()
    runs = [run(args.n) for _ in range(max(1, args.r))]
    exits = statistics.median(r["exits_per_s"] for r in runs)
    calls = statistics.median(r["hypercalls_per_s"] for r in runs)
    ratio = statistics.median(r["hypercalls_per_s"] / r["exits_per_s"] for r in runs)
    print(f"median of {len(runs)} runs, n={args.n}")
    print(f"bare exit loop (ignored port write): {exits:10.0f} exits/s")
    print(f"hypercall loop (xen_version):        {calls:10.0f} hypercalls/s")
    print(f"hypercall / bare exit ratio:         {ratio:10.2f}")


if __name__ == "__main__":
    main()
