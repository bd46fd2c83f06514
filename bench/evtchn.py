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

Each run also starts guests/build/bare_exit (the C floor: a minimal C KVM VMM running the
same 4-instruction exit loop; given evtchn_test.elf it also loads that guest's segments and
runs its own request(LOOPBACK_PING) from a copy of its own loop, answered in C: at
EVTCHNOP_send (sync, the floor of any VMM running this guest code), at SCHEDOP_poll (the
guest instructions of the asynchronous path), and by a C backend thread woken by an eventfd
(pyxen's design, all in C); 2-level ABI), and samples the VMM's user/system CPU time around the PING
loop: under kvm_pvm the guest's ring-0 instructions are emulated inside KVM_RUN (system
time), so that split says how much of a round trip is pyxen's own work.

Each figure is the median of -r runs (one VMM each); a ratio is the median of the
per-run ratios.
"""

from __future__ import annotations

import argparse
import re
import statistics

from bench_domain import ROOT, bare_exit, bench_domain

ELF = ROOT / "guests" / "build" / "evtchn_test.elf"
FLOORS = (("sync", "C floor, answered at EVTCHNOP_send (sync):"),
          ("poll", "C floor, answered at SCHEDOP_poll:"),
          ("thread", "C floor, a C backend thread woken by eventfd:"))


def run(n: int, abi: str = "2l") -> dict[str, float]:
    result = None
    c = bare_exit(n, evtchn_elf=ELF)
    cpu = []
    with bench_domain("evtchn_test", f"mode=loopback n={n} abi={abi}") as dom:
        for ev in dom.events():
            line = ev.get("line", "") if ev.get("event") == "log" else ""
            if "loopback: ping loop" in line or "exit_cycles=" in line:
                cpu.append((*dom.cpu_times(), dom.cpu_ns()))
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
    (u0, s0, n0), (u1, s1, n1) = cpu[0], cpu[-1]
    return {"exit_us": exit_cycles * 1000 / khz, "rtt_us": rtt_cycles * 1000 / khz,
            "c_exit_us": c["exit_us"], "c_hcall_us": c["hcall_us"],
            "c_exit_cpu_us": c["exit_cpu_us"],
            **{f"floor_{m}_us": c[f"evtchn_{m}_us"] for m, _ in FLOORS},
            **{f"floor_{m}_cpu_us": c[f"evtchn_{m}_cpu_us"] for m, _ in FLOORS},
            **{k: c[f"evtchn_{k}"] for k in ("sync_insns", "poll_insns", "thread_polls")},
            "cpu_us": (n1 - n0) / 1000 / n,
            "user_us": (u1 - u0) * 1e6 / n, "sys_us": (s1 - s0) * 1e6 / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="iterations per loop")
    ap.add_argument("-r", type=int, default=5, help="runs; figures are their medians")
    ap.add_argument("--abi", choices=("2l", "fifo"), default="2l", help="delivery ABI")
    args = ap.parse_args()
    runs = [run(args.n, args.abi) for _ in range(max(1, args.r))]

    def med(f) -> float:  # noqa: ANN001
        return statistics.median(f(r) for r in runs)

    print(f"median of {len(runs)} runs, n={args.n}, {args.abi} ABI; us per round trip")
    print(f"C VMM, bare exit loop (4 guest insns):            {med(lambda r: r['c_exit_us']):8.1f}")
    print(f"C VMM, hypercall-shaped loop (13 guest insns):    {med(lambda r: r['c_hcall_us']):8.1f}")
    print(f"pyxen, bare exit loop (this guest, TSC):          {med(lambda r: r['exit_us']):8.1f}")
    for m, label in FLOORS:
        key = f"floor_{m}_us"
        print(f"{label:50}{med(lambda r: r[key]):8.1f}"  # noqa: B023
              f"   x{med(lambda r: r[key] / r['c_exit_us']):.2f} C bare exit,"  # noqa: B023
              f" CPU {med(lambda r: r[key.replace('_us', '_cpu_us')]):.1f}")  # noqa: B023
    print(f"  guest instructions per round trip (single-stepped): sync"
          f" {med(lambda r: r['sync_insns']):.0f}, answered at poll"
          f" {med(lambda r: r['poll_insns']):.0f} (bare exit: 4); the C backend thread's"
          f" run polled {med(lambda r: r['thread_polls']):.2f} times per round trip")
    print(f"pyxen evtchn round trip guest -> dom0 -> guest:   {med(lambda r: r['rtt_us']):8.1f}"
          f"   x{med(lambda r: r['rtt_us'] / r['c_exit_us']):.2f} C bare exit,"
          f" x{med(lambda r: r['rtt_us'] / r['exit_us']):.2f} pyxen bare exit,"
          f" x{med(lambda r: r['rtt_us'] / r['floor_sync_us']):.2f} sync floor,"
          f" x{med(lambda r: r['rtt_us'] / r['floor_thread_us']):.2f} thread floor")
    print(f"  VMM CPU per round trip: user (Python, C) {med(lambda r: r['user_us']):.1f},"
          f" system (KVM_RUN: guest emulation, wake-ups) {med(lambda r: r['sys_us']):.1f}")
    print(f"  CPU time per round trip, all threads (not inflated by a busy host):"
          f" {med(lambda r: r['cpu_us']):.1f} against {med(lambda r: r['c_exit_cpu_us']):.1f}"
          f" for the C VMM's bare exit: x{med(lambda r: r['cpu_us'] / r['c_exit_cpu_us']):.2f}")

if __name__ == "__main__":
    main()
