"""Network throughput through netback, next to a host veth pair measured in the same run.

Boots two netguest.elf guests (guests/netguest.c) with `xl` on a private $PYXEN_RUNDIR,
their vifs on a bridge shared with a network namespace this script creates (all names
carry its pid; everything is removed at the end), then measures UDP payload throughput
with 1400-byte datagrams:

  host->guest   the namespace sends to guest A's discard port for T seconds; what A
                counted (its "stats" answer) / T
  guest->host   guest A streams N datagrams to the namespace ("blast"); received / time
  guest->guest  guest A streams to guest B across the bridge; B's count / time
  veth          the same sender and receiver over a veth pair between the namespace and
                the host: the baseline, and each figure's ratio to it

For every guest figure it prints where the CPU went: the guest's vCPU time (its kernel
code is emulated by KVM on these hosts, ~1M instructions/s: shared/PLATFORM.md) and the
netback threads' time in the guest's VMM (/proc/PID/task/TID, named netback*), each as
a share of the wall time.

    .venv/bin/python bench/net.py [-t SECONDS] [-n DATAGRAMS]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUEST = REPO / "guests" / "build" / "netguest.elf"
SIZE = 1400
TAG = os.getpid() % 100000
NS, BR = f"pxbn{TAG}", f"pxbb{TAG}"
VETH_BR, VETH_NS = f"pxbv{TAG}", f"pxbw{TAG}"  # namespace <-> bridge
BASE_HOST, BASE_NS = f"pxbx{TAG}", f"pxby{TAG}"  # the baseline pair
NET = "10.199.0"
BASE = "10.198.0"
CLK = os.sysconf("SC_CLK_TCK")


# --- running code in the namespace (a forked child that enters it) -----------------------

def in_ns(fn, *args):  # noqa: ANN001, ANN002, ANN201
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child() -> None:
        from pyroute2 import netns

        try:
            netns.setns(NS)
            q.put((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            q.put((False, f"{type(e).__name__}: {e}"))

    p = ctx.Process(target=child)
    p.start()
    try:
        ok, out = q.get(timeout=300)
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
    if not ok:
        raise RuntimeError(f"in the namespace: {out}")
    return out


def udp_send(dst: str, port: int, seconds: float) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    payload, sent, end = b"x" * SIZE, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                s.sendto(payload, (dst, port))
                sent += SIZE
    return sent


def udp_recv(bind: str, port: int, seconds: float, until: bytes | None = None,
             trigger: tuple[str, int, bytes] | None = None) -> tuple[int, float]:
    """(payload bytes received, seconds from the first datagram (or the trigger) to the
    last one / the `until` datagram)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((bind, port))
    s.settimeout(5)
    start = last = None
    total = 0
    if trigger is not None:
        start = time.monotonic()
        s.sendto(trigger[2], (trigger[0], trigger[1]))
    deadline = time.monotonic() + seconds
    with contextlib.suppress(socket.timeout):
        while time.monotonic() < deadline:
            data = s.recv(65536)
            now = time.monotonic()
            if until is not None and data.startswith(until):
                last = now
                break
            start = start or now
            last = now
            total += len(data)
    return total, (last - start) if start and last and last > start else 0.0


def ask(ip: str, port: int, msg: bytes) -> bytes:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    for _ in range(20):
        s.sendto(msg, (ip, port))
        with contextlib.suppress(socket.timeout):
            return s.recv(200)
    raise RuntimeError(f"{ip}:{port} does not answer {msg!r}")


def stats(ip: str) -> int:
    reply = in_ns(ask, ip, 9, b"stats").decode()
    return int(re.search(r"rx_bytes (\d+)", reply).group(1))  # type: ignore[union-attr]


# --- CPU accounting -----------------------------------------------------------------------

def vmm_pid(rundir: Path, domid: int) -> int:
    marker = f"PYXEN_RUNDIR={rundir}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"pyxen.vmm" in cmd and str(domid).encode() in cmd:
                return int(entry)
    raise RuntimeError(f"no VMM for domain {domid}")


def cpu(pid: int) -> tuple[float, float]:
    """(netback threads, all threads) CPU seconds of a VMM."""
    nb = total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            t = (int(fields[11]) + int(fields[12])) / CLK
            total += t
            if name.startswith("netback"):
                nb += t
    return nb, total


class Meter:
    """vCPU time (xl's Time column, from the VMM) and netback thread time over a run."""

    def __init__(self, env: dict[str, str], doms: dict[str, int], pids: dict[str, int]) -> None:
        self.env, self.doms, self.pids = env, doms, pids

    def vcpu(self) -> dict[str, float]:
        out = subprocess.run([sys.executable, "-m", "pyxen.cli.xl", "list"], env=self.env,
                             capture_output=True, text=True, check=True).stdout
        rows = {ln[:40].rstrip(): ln[40:].split() for ln in out.splitlines()[1:]}
        return {n: float(rows[n][4]) for n in self.doms}

    def __enter__(self) -> Meter:
        self.t0, self.v0 = time.monotonic(), self.vcpu()
        self.c0 = {n: cpu(p) for n, p in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        v1, c1 = self.vcpu(), {n: cpu(p) for n, p in self.pids.items()}
        self.share = {n: ((v1[n] - self.v0[n]) / self.wall,
                          (c1[n][0] - self.c0[n][0]) / self.wall,
                          (c1[n][1] - self.c0[n][1]) / self.wall) for n in self.doms}

    def note(self) -> str:
        return "; ".join(f"{n[-1]}: vCPU {v:4.0%}, netback {b:4.0%}, VMM {t:4.0%}"
                         for n, (v, b, t) in self.share.items())


# --- set-up and tear-down -----------------------------------------------------------------

def setup_net() -> None:
    from pyroute2 import IPRoute, NetNS, netns

    netns.create(NS)
    with IPRoute() as ipr:
        ipr.link("add", ifname=BR, kind="bridge")
        ipr.link("add", ifname=VETH_BR, kind="veth", peer=VETH_NS)
        ipr.link("add", ifname=BASE_HOST, kind="veth", peer=BASE_NS)
        for n in (VETH_NS, BASE_NS):
            ipr.link("set", index=ipr.link_lookup(ifname=n)[0], net_ns_fd=NS)
        br = ipr.link_lookup(ifname=BR)[0]
        ipr.link("set", index=br, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname=VETH_BR)[0], master=br, state="up")
        bh = ipr.link_lookup(ifname=BASE_HOST)[0]
        ipr.addr("add", index=bh, address=f"{BASE}.1", prefixlen=24)
        ipr.link("set", index=bh, state="up")
    with NetNS(NS) as ns:
        for n, addr in ((VETH_NS, f"{NET}.1"), (BASE_NS, f"{BASE}.2")):
            idx = ns.link_lookup(ifname=n)[0]
            ns.addr("add", index=idx, address=addr, prefixlen=24)
            ns.link("set", index=idx, state="up")
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def teardown_net() -> None:
    from pyroute2 import IPRoute, netns

    with contextlib.suppress(Exception), IPRoute() as ipr:
        for n in (VETH_BR, BASE_HOST, BR):
            for idx in ipr.link_lookup(ifname=n):
                ipr.link("del", index=idx)
    with contextlib.suppress(Exception):
        netns.remove(NS)


def xl(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "pyxen.cli.xl", *args], env=env,
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"xl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", type=float, default=3.0, help="seconds per streaming run")
    ap.add_argument("-n", type=int, default=20000, help="datagrams per guest blast")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still tear down
    if os.geteuid() != 0 or not GUEST.exists():
        sys.exit("bench/net.py needs root and guests/build/netguest.elf (scripts/setup)")
    tmp = Path(tempfile.mkdtemp(prefix="pyxen-bench-net-"))
    env = dict(os.environ, PYXEN_RUNDIR=str(tmp / "run"))
    doms: dict[str, int] = {}
    pids: dict[str, int] = {}
    try:
        setup_net()
        for name, ip in (("A", f"{NET}.2"), ("B", f"{NET}.3")):
            cfg = tmp / f"{name}.cfg"
            cfg.write_text(f'name = "bench-net-{name}"\ntype = "pvh"\nmemory = 32\n'
                           f'kernel = "{GUEST}"\ncmdline = "ip={ip}"\n'
                           f"vif = [ 'bridge={BR}' ]\n")
            xl(env, "create", str(cfg))
        rows = xl(env, "list").splitlines()[1:]
        for ln in rows:
            name = ln[:40].rstrip()
            if name.startswith("bench-net-"):
                doms[name] = int(ln[40:].split()[0])
        for name, domid in doms.items():
            pids[name] = vmm_pid(tmp / "run", domid)
        a = "bench-net-A"
        stats(f"{NET}.2")
        stats(f"{NET}.3")  # both answer: ARP resolved, rings up

        results: list[tuple[str, float, str]] = []
        # baseline: the namespace sends to the host over a veth pair
        pool = mp.get_context("fork").Pool(1)
        rx = pool.apply_async(udp_recv, (f"{BASE}.1", 5002, args.t + 2))
        time.sleep(0.3)
        in_ns(udp_send, f"{BASE}.1", 5002, args.t)
        got, secs = rx.get()
        pool.close()
        veth = got / max(secs, 1e-9)
        results.append(("veth pair (host<->namespace)", veth, ""))

        m = Meter(env, {a: doms[a]}, {a: pids[a]})
        before = stats(f"{NET}.2")
        with m:
            in_ns(udp_send, f"{NET}.2", 9, args.t)
            got = stats(f"{NET}.2") - before
        results.append(("host->guest", got / args.t, m.note()))

        m = Meter(env, {a: doms[a]}, {a: pids[a]})
        with m:
            got, secs = in_ns(udp_recv, f"{NET}.1", 5001, 120, b"blast done",
                              (f"{NET}.2", 19, f"blast {args.n} {SIZE} 5001".encode()))
        results.append(("guest->host", got / max(secs, 1e-9), m.note()))

        m = Meter(env, doms, pids)
        before = stats(f"{NET}.3")
        with m:
            reply = in_ns(ask_blast, f"{NET}.2", f"blast {args.n} {SIZE} 9 {NET}.3")
            got = stats(f"{NET}.3") - before
        results.append(("guest->guest", got / max(reply, 1e-9), m.note()))

        print(f"UDP payload throughput, {SIZE}-byte datagrams (MB/s; ratio to the veth pair)")
        for what, rate, note in results:
            print(f"  {what:30s} {rate / 1e6:8.2f} MB/s  {rate / veth:6.3f}x  {note}")
        print("  vCPU = the guest's vCPU time (its kernel code, emulated by KVM here, and the "
              "VMM's exit handling on that thread);\n  netback = the VMM's backend threads; "
              "VMM = the whole VMM process (user+system); each as a share of wall time.")
    finally:
        with contextlib.suppress(Exception):
            for name in list(doms):
                xl(env, "destroy", name)
        pid = (tmp / "run" / "hostd.pid")
        with contextlib.suppress(Exception):
            os.kill(int(pid.read_text()), 15)
            time.sleep(1)
        teardown_net()


def ask_blast(ip: str, msg: str) -> float:
    """Start a guest->guest blast from the namespace and time it to 'blast done'."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(60)
    t = time.monotonic()
    s.sendto(msg.encode(), (ip, 19))
    while not s.recv(200).startswith(b"blast done"):
        pass
    return time.monotonic() - t


if __name__ == "__main__":
    main()
