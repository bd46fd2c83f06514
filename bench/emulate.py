#!/usr/bin/env python3
"""The cost of an instruction the host's KVM cannot emulate (arch/x86/emulate.py), against
a port-I/O exit to the VMM measured in the same run.

Boots guests/build/emulate_test.elf with `mode=bench n=N`: the guest times (TSC) N `pxor`
in ring 0, each a KVM emulation failure that pyxen runs in unicorn, then N port writes
pyxen ignores (the bare exit round trip). The VMM's own figure (time inside
arch/x86/emulate.py per instruction) comes from the domain dump of debug key 'q'.

    python bench/emulate.py [-n 2000] [-r 3]

Figures are medians of -r runs; the ratio is the median of the per-run ratios.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics

from bench_domain import bench_domain


def run(n: int) -> dict[str, float]:
    guest = vmm = None
    with bench_domain("emulate_test", f"mode=bench n={n}") as dom:
        for ev in dom.events():
            m = re.search(r"emulated pxor (\d+) ns each, port-I/O exit (\d+) ns each",
                          ev.get("line", ""))
            if m:
                guest = (int(m.group(1)) / 1000, int(m.group(2)) / 1000)
        dom.request({"id": 2, "op": "debug_key", "key": "q"})
        for raw in dom.control:
            reply = json.loads(raw)
            if reply.get("id") == 2:
                for line in reply.get("lines", []):
                    mm = re.search(r"Instructions emulated .*, ([\d.]+) us each", line)
                    if mm:
                        vmm = float(mm.group(1))
                break
    if guest is None:
        raise SystemExit("bench: the guest printed no result")
    return {"emulated_us": guest[0], "exit_us": guest[1], "vmm_us": vmm or 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="instructions per loop")
    ap.add_argument("-r", type=int, default=3, help="runs; figures are their medians")
    args = ap.parse_args()
    runs = [run(args.n) for _ in range(max(1, args.r))]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    ratio = statistics.median(r["emulated_us"] / r["exit_us"] for r in runs)
    print(f"median of {len(runs)} runs, n={args.n}")
    print(f"emulated pxor, seen by the guest:     {med('emulated_us'):8.1f} us")
    print(f"  of which inside emulate.py (VMM):   {med('vmm_us'):8.1f} us")
    print(f"port-I/O exit round trip (baseline):  {med('exit_us'):8.1f} us")
    print(f"emulated instruction / exit ratio:    {ratio:8.1f}")


if __name__ == "__main__":
    main()
