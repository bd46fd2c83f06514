#!/usr/bin/env python3
"""Event channel notification round trip guest -> dom0 -> guest, against a bare exit round
trip measured in the same run by the same guest.

Boots guests/build/evtchn_test.elf with `mode=loopback n=N` through `python -m pyxen.vmm`
and attaches pyxen's loopback backend (dom0's end, in the VMM) to the page and channel the
guest offers. The guest times, with its TSC, N ignored port writes (guest -> KVM -> user
space -> KVM_RUN) and then N PING requests: EVTCHNOP_send to dom0, the backend wakes on its
eventfd, answers in the granted page and notifies back, the guest waits in SCHEDOP_poll.

    python bench/evtchn.py [-n 2000] [-r 5] [--abi fifo]

With --abi fifo the guest uses the FIFO ABI and takes every notification from dom0 as an
upcall that consumes its queue (instead of polling the 2-level pending bit).

Each figure is the median of -r runs (one VMM each); the ratio is the median of the
per-run ratios.
"""

from __future__ import annotations

import argparse
import re
import statistics

from bench_domain import bench_domain


def run(n: int, abi: str = "2l") -> dict[str, float]:
    result = None
    with bench_domain("evtchn_test", f"mode=loopback n={n} abi={abi}") as dom:
        for ev in dom.events():
            line = ev.get("line", "") if ev.get("event") == "log" else ""
            m = re.search(r"loopback: port=(\d+) gref=(\d+)", line)
            if m:
                dom.request({"id": 2, "op": "loopback_attach", "port": int(m.group(1)),
                             "gref": int(m.group(2))})
            m = re.search(r"exit_cycles=(\d+) rtt_cycles=(\d+) tsc_khz=(\d+)", line)
            if m:
                result = [int(x) for x in m.groups()]
            if ev.get("id") == 2 and not ev.get("ok"):
                raise SystemExit(f"bench: loopback_attach: {ev.get('error')}")
    if result is None:
        raise SystemExit("bench: the guest printed no result")
    exit_cycles, rtt_cycles, khz = result
    return {"exit_us": exit_cycles * 1000 / khz, "rtt_us": rtt_cycles * 1000 / khz}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="iterations per loop")
    ap.add_argument("-r", type=int, default=5, help="runs; figures are their medians")
    ap.add_argument("--abi", choices=("2l", "fifo"), default="2l", help="delivery ABI")
    args = ap.parse_args()
    runs = [run(args.n, args.abi) for _ in range(max(1, args.r))]
    exit_us = statistics.median(r["exit_us"] for r in runs)
    rtt_us = statistics.median(r["rtt_us"] for r in runs)
    ratio = statistics.median(r["rtt_us"] / r["exit_us"] for r in runs)
    print(f"median of {len(runs)} runs, n={args.n}, {args.abi} ABI")
    print(f"bare exit round trip (ignored port write):     {exit_us:9.1f} us")
    print(f"evtchn round trip guest -> dom0 -> guest:      {rtt_us:9.1f} us")
    print(f"notification round trip / bare exit ratio:     {ratio:9.2f}")


if __name__ == "__main__":
    main()
