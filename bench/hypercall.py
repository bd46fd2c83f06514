#!/usr/bin/env python3
"""Hypercall round trip and rate, against a C VMM running the same guest loops in the same run.

Each run first starts guests/build/bare_exit (guests/bare_exit.c: a minimal C KVM VMM that
runs hello.elf's bench loops byte for byte), then boots guests/build/hello.elf with
`mode=bench n=N smp=1` (2 vCPUs) through `python -m pyxen.vmm`. The guest does N port
writes that pyxen ignores (the bare exit round trip: guest -> KVM -> user space -> KVM_RUN),
then N xen_version(XENVER_version) hypercalls through the hypercall page, then N on each
of its two vCPUs at once. Each phase is timed between the guest's console markers as they
arrive in the log; the VMM's CPU time (exact, all threads; and its user/system split in
clock ticks) is sampled at the same marks. On a shared, busy host wall time per round
trip grows with the load while CPU time does not: the CPU ratios are the steadier ones.

Under kvm_pvm (docs: PLATFORM.md) the guest's ring-0 instructions are emulated (~1 us
each): the exit loop runs 4 guest instructions per iteration, the hypercall loop 13
(10 in hello's caller, 3 in the stub), so the C VMM's own hypercall loop is the fair floor
for pyxen's hypercall; both ratios are printed.

    python bench/hypercall.py [-n 20000] [-r 5]

Each figure is the median of -r runs; a ratio is the median of the per-run ratios, so a
noisy run does not pair one run's baseline with another's figure.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_domain import bare_exit, bench_domain


def run(n: int) -> dict[str, float]:
    res = {f"c_{k}": v for k, v in bare_exit(n, 2).items()}
    marks: dict[str, float] = {}
    cpu: dict[str, tuple[float, float]] = {}
    cpu_ns: dict[str, int] = {}
    with bench_domain("hello", f"mode=bench n={n} smp=1", vcpus=2) as dom:
        for ev in dom.events():
            now = time.perf_counter()
            if ev.get("event") == "log" and "pyxen bench: " in ev["line"]:
                mark = ev["line"].split("pyxen bench: ", 1)[1].split(" n=")[0]
                marks[mark] = now
                cpu[mark] = dom.cpu_times()
                cpu_ns[mark] = dom.cpu_ns()
    res["exit_us"] = (marks["exit loop done"] - marks["exit loop start"]) * 1e6 / n
    res["hcall_us"] = (marks["hypercall loop done"] - marks["hypercall loop start"]) * 1e6 / n
    (u0, s0), (u1, s1) = cpu["hypercall loop start"], cpu["hypercall loop done"]
    res["hcall_user_us"], res["hcall_sys_us"] = (u1 - u0) * 1e6 / n, (s1 - s0) * 1e6 / n
    for loop, key in (("exit loop", "exit_cpu_us"), ("hypercall loop", "hcall_cpu_us")):
        res[key] = (cpu_ns[f"{loop} done"] - cpu_ns[f"{loop} start"]) / 1000 / n
    res["smp_hcalls_per_s"] = 2 * n / (marks["smp hypercall loop done"]
                                       - marks["smp hypercall loop start"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="iterations per loop")
    ap.add_argument("-r", type=int, default=5, help="runs; figures are their medians")
    args = ap.parse_args()
    runs = [run(args.n) for _ in range(max(1, args.r))]

    def med(f) -> float:  # noqa: ANN001
        return statistics.median(f(r) for r in runs)

    print(f"median of {len(runs)} runs, n={args.n}; us per round trip")
    print(f"C VMM, bare exit loop (4 guest insns):           {med(lambda r: r['c_exit_us']):8.1f}")
    print(f"C VMM, hypercall-shaped loop (13 guest insns):   {med(lambda r: r['c_hcall_us']):8.1f}")
    print(f"pyxen, bare exit loop (ignored port write):      {med(lambda r: r['exit_us']):8.1f}"
          f"   x{med(lambda r: r['exit_us'] / r['c_exit_us']):.2f} C bare exit")
    print(f"pyxen, hypercall (xen_version):                  {med(lambda r: r['hcall_us']):8.1f}"
          f"   x{med(lambda r: r['hcall_us'] / r['c_exit_us']):.2f} C bare exit,"
          f" x{med(lambda r: r['hcall_us'] / r['c_hcall_us']):.2f} C same-insn loop")
    print(f"  VMM CPU per hypercall: user (VMM) {med(lambda r: r['hcall_user_us']):.1f},"
          f" system (KVM_RUN, guest emulation) {med(lambda r: r['hcall_sys_us']):.1f}")
    print("CPU time per round trip (all threads; unlike wall time, not inflated by a busy host):")
    print(f"  bare exit: pyxen {med(lambda r: r['exit_cpu_us']):.1f},"
          f" C VMM {med(lambda r: r['c_exit_cpu_us']):.1f}"
          f"   x{med(lambda r: r['exit_cpu_us'] / r['c_exit_cpu_us']):.2f}")
    print(f"  hypercall: pyxen {med(lambda r: r['hcall_cpu_us']):.1f},"
          f" C VMM same-insn loop {med(lambda r: r['c_hcall_cpu_us']):.1f}"
          f"   x{med(lambda r: r['hcall_cpu_us'] / r['c_hcall_cpu_us']):.2f};"
          f" x{med(lambda r: r['hcall_cpu_us'] / r['c_exit_cpu_us']):.2f} C bare exit")
    c1 = med(lambda r: 1e6 / r["c_hcall_us"])
    p1 = med(lambda r: 1e6 / r["hcall_us"])
    print(f"2 vCPUs at once, hypercalls/s in total: pyxen {med(lambda r: r['smp_hcalls_per_s']):8.0f}"
          f" (x{med(lambda r: r['smp_hcalls_per_s'] * r['hcall_us'] / 1e6):.2f} of 1 vCPU {p1:.0f}),"
          f" C VMM {med(lambda r: r['c_smp_hcalls_per_s']):.0f}"
          f" (x{med(lambda r: r['c_smp_hcalls_per_s'] * r['c_hcall_us'] / 1e6):.2f} of 1 vCPU {c1:.0f})")


if __name__ == "__main__":
    main()
