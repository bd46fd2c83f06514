"""How fast and how small a domain is: xl create -> first console byte, domains created
per second (sequential and parallel xl's), the idle VMM's memory; beside baselines
measured in the same run: `python -c pass` and an idle Firecracker-like floor
(bench/kvmfloor.c: a bare KVM VM with the same RAM and one halted vCPU).

    .venv/bin/python bench/create.py [-n 7] [-k 10] [--modes template,fresh]

The xl figures are measured for both of xl's paths on the same host, interleaved: "lean"
(the installed `xl`, cli/xlmain.py's FAST table and cli/xl_create.py) and "click"
(PYXEN_XL_SLOW=1: the click command). The package is byte-compiled first, as an installed
one is (this environment sets PYTHONDONTWRITEBYTECODE).

Each mode gets its own throw-away host ($PYXEN_RUNDIR): "template" forks VMMs from
hostd's warm template process (toolstack/template.py), "fresh" starts a new interpreter
per domain (PYXEN_TEMPLATE=0, what pyxen did before the template).

Memory: PSS (Pss in /proc/PID/smaps_rollup) splits each shared page between the
processes that map it, so summing PSS over the template and its N idle children counts
every page they share exactly once. The per-domain cost reported is that sum minus the
template's PSS measured alone just before the domains were made, divided by N: what one
more idle domain adds to the host. USS (Private_Clean + Private_Dirty) per VMM is shown
too: the pages only that VMM holds (what its death gives back). Guest RAM the guest has
touched is in both (the memfd is mapped by its VMM only). PSS also splits library pages
with every other process on the host that maps them (other Pythons), so the sum moves
with the host's load; "distinct pages" does not: the physical pages (pagemap PFNs, as
root) mapped by the template and its N children, each counted once, less those the
template maps alone before the domains exist, divided by N. For "fresh" VMMs the same
is done over the VMMs alone (no template).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "guests" / "build" / "hello.elf"
_XL = Path(sys.executable).parent / "xl"  # the installed entry point (pyxen.cli.xlmain)
XL = [str(_XL)] if _XL.exists() else [sys.executable, "-m", "pyxen.cli.xlmain"]
PATHS = ("lean", "click")
MEM_MIB = 32


def smaps(pid: int) -> dict[str, int]:
    """smaps_rollup in KiB: Pss, Rss, Private_Clean, Private_Dirty, ..."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def frames(pids: list[int]) -> set[int]:
    """The physical pages (PFNs, /proc/PID/pagemap: needs root) the processes map: a
    page several of them share is one element."""
    out: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps, \
                open(f"/proc/{pid}/pagemap", "rb") as pm:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if line.rstrip().endswith("[vsyscall]"):
                    continue
                pm.seek(lo // 4096 * 8)
                data = pm.read((hi - lo) // 4096 * 8)
                for e in struct.unpack(f"<{len(data) // 8}Q", data):
                    if e >> 63:  # present
                        out.add(e & ((1 << 55) - 1))
    out.discard(0)  # no PFN shown (not root): nothing to count
    return out


def childless(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process has no children (a VMM that is still exiting shares the
    template's pages, and the template's PSS "alone" would read too low)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                return
        except OSError:
            return
        time.sleep(0.05)


def uss(m: dict[str, int]) -> int:
    return m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------- baselines

def python_pass(n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        ts.append(time.perf_counter() - t0)
    return med(ts)


def build_floor(tmp: Path) -> Path:
    exe = tmp / "kvmfloor"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(ROOT / "bench" / "kvmfloor.c")],
                   check=True)
    return exe


def floor(exe: Path, n: int) -> tuple[float, float, dict[str, int]]:
    """(median time to the first guest byte, VMs created per second in sequence, the
    idle VM's smaps)."""
    ts, procs = [], []
    t_all = time.perf_counter()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            p = subprocess.Popen([str(exe), str(MEM_MIB)], stdout=subprocess.PIPE)
            assert p.stdout is not None
            if p.stdout.read(1) != b"!":
                raise SystemExit("bench: kvmfloor did not start")
            ts.append(time.perf_counter() - t0)
            procs.append(p)
        rate = n / (time.perf_counter() - t_all)
        time.sleep(0.2)
        m = smaps(procs[-1].pid)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return med(ts), rate, m


# ---------------------------------------------------------------- pyxen

class PyxenHost:
    def __init__(self, root: Path, template: bool) -> None:
        self.root = root
        self.env = dict(os.environ, PYXEN_RUNDIR=str(root),
                        PYTHONPATH=str(ROOT / "src") + os.pathsep
                        + os.environ.get("PYTHONPATH", ""))
        self.env.pop("XENSTORED_PATH", None)
        if not template:
            self.env["PYXEN_TEMPLATE"] = "0"
        self.create_replies: list[float] = []
        self.slow_env = dict(self.env, PYXEN_XL_SLOW="1")
        self.cfgdir = root.parent / "cfg"
        self.cfgdir.mkdir(parents=True, exist_ok=True)

    def envof(self, path: str) -> dict[str, str]:
        return self.slow_env if path == "click" else self.env

    def xl(self, *args: str, check: bool = True,
           path: str = "lean") -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run([*XL, *args], env=self.envof(path),
                           capture_output=True, timeout=120)
        if check and r.returncode:
            raise SystemExit(f"bench: xl {' '.join(args)}: {r.stderr.decode().strip()}")
        return r

    def cfg(self, name: str, mode: str) -> str:
        f = self.cfgdir / f"{name}.cfg"
        f.write_text(f'name = "{name}"\ntype = "pvh"\nkernel = "{HELLO}"\n'
                     f'memory = {MEM_MIB}\nvcpus = 1\ncmdline = "mode={mode}"\n'
                     'on_poweroff = "destroy"\non_crash = "destroy"\n')
        return str(f)

    def first_byte_xl(self, name: str, path: str) -> float:
        """`xl create -c` of a hello guest: time to the first byte on xl's stdout."""
        cfg = self.cfg(name, "hello")
        t0 = time.perf_counter()
        p = subprocess.Popen([*XL, "create", "-c", cfg], env=self.envof(path),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL)
        assert p.stdout is not None
        first = p.stdout.read(1)
        t = time.perf_counter() - t0
        p.stdout.read()
        p.wait(60)
        if not first:
            raise SystemExit("bench: xl create -c printed nothing")
        return t

    def rpc(self, op: str, **args: object) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.root / "pyxend.sock"))
            f = s.makefile("rwb")
            f.write(json.dumps({"id": 1, "op": op, **args}).encode() + b"\n")
            f.flush()
            reply = json.loads(f.readline())
        if not reply.get("ok"):
            raise SystemExit(f"bench: {op}: {reply.get('error')}")
        return reply

    def first_byte_rpc(self, name: str) -> float:
        """The same without xl's own start-up: create over pyxend.sock, then the console."""
        from pyxen.toolstack import config as domconfig
        cfg = domconfig.load(self.cfg(name, "hello"), []).to_json()
        t0 = time.perf_counter()
        reply = self.rpc("create", config=cfg, paused=False)
        self.create_replies.append(time.perf_counter() - t0)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(reply["console"])
            first = s.recv(1)
            t = time.perf_counter() - t0
            while s.recv(65536):
                pass
        if not first:
            raise SystemExit("bench: the console gave nothing")
        return t

    def template_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "template" / "pid").read_text())
        return None

    def vmm_pids(self) -> list[int]:
        pids = []
        for d in (self.root / "domains").iterdir():
            with socket.socket(socket.AF_UNIX) as s:
                with contextlib.suppress(OSError):
                    s.connect(str(d / "control.sock"))
                    cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                    pids.append(int.from_bytes(cred[:4], "little"))
        return pids

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int((self.root / "hostd.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(600):
                os.kill(pid, 0)
                time.sleep(0.05)


def run_mode(tmp: Path, template: bool, n: int, k: int, par: int) -> dict:
    h = PyxenHost(tmp / ("tpl" if template else "fresh") / "run", template)
    res: dict = {}
    try:
        h.xl("list")  # starts hostd (and its template): not counted
        h.first_byte_xl("warmup", "lean")
        firsts: dict[str, list[float]] = {p: [] for p in PATHS}
        for i in range(n):  # interleaved: the host's load moves
            for p in PATHS:
                firsts[p].append(h.first_byte_xl(f"h{p}{i}", p))
        for p in PATHS:
            res[f"xl_first_{p}"] = med(firsts[p])
        res["rpc_first"] = med([h.first_byte_rpc(f"r{i}") for i in range(n)])
        res["rpc_reply"] = med(h.create_replies)
        tpid = h.template_pid() if template else None
        if tpid:  # alone: the hello domains' VMMs above may still be exiting
            childless(tpid)
        res["tpl_before"] = smaps(tpid) if tpid else {}
        res["tpl_frames"] = len(frames([tpid])) if tpid else 0
        for p in reversed(PATHS):  # the lean path last: its domains are measured below
            t0 = time.perf_counter()
            for i in range(k):
                h.xl("create", h.cfg(f"s{p}{i}", "idle"), path=p)
            res[f"seq_rate_{p}"] = k / (time.perf_counter() - t0)
            if p == "lean":
                break
            t0 = time.perf_counter()
            for i in range(k):
                h.xl("destroy", f"s{p}{i}", path=p)
            res[f"destroy_rate_{p}"] = k / (time.perf_counter() - t0)
        time.sleep(1.0)  # idle: the guests have blocked
        pids = h.vmm_pids()
        res["vmms"] = [smaps(p) for p in pids]
        res["tpl_after"] = smaps(tpid) if tpid else {}
        res["group_frames"] = len(frames(pids + ([tpid] if tpid else [])))
        t0 = time.perf_counter()
        for i in range(k):
            h.xl("destroy", f"slean{i}")
        res["destroy_rate_lean"] = k / (time.perf_counter() - t0)
        from pyxen.toolstack import config as domconfig
        cfgs = [domconfig.load(h.cfg(f"q{i}", "idle"), []).to_json() for i in range(k)]
        t0 = time.perf_counter()
        for c in cfgs:
            h.rpc("create", config=c, paused=False)
        res["rpc_seq_rate"] = k / (time.perf_counter() - t0)
        for i in range(k):
            h.rpc("destroy", domain=f"q{i}")
        cfgs = [domconfig.load(h.cfg(f"w{i}", "idle"), []).to_json() for i in range(k)]
        from concurrent.futures import ThreadPoolExecutor
        t0 = time.perf_counter()
        with ThreadPoolExecutor(par) as ex:
            list(ex.map(lambda c: h.rpc("create", config=c, paused=False), cfgs))
        res["rpc_par_rate"] = k / (time.perf_counter() - t0)
        for i in range(k):
            h.rpc("destroy", domain=f"w{i}")
        xl = " ".join(XL)
        for p in PATHS:
            t0 = time.perf_counter()
            procs = [subprocess.Popen(
                ["sh", "-c", " && ".join(
                    f"{xl} create {h.cfg(f'p{p}{j}_{i}', 'idle')}"
                    for i in range(k // par or 1))], env=h.envof(p)) for j in range(par)]
            for proc in procs:
                if proc.wait(300):
                    raise SystemExit("bench: a parallel xl create failed")
            res[f"par_rate_{p}"] = par * (k // par or 1) / (time.perf_counter() - t0)
            for j in range(par):
                for i in range(k // par or 1):
                    h.xl("destroy", f"p{p}{j}_{i}")
    finally:
        h.stop()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=7, help="runs per median (first byte)")
    ap.add_argument("-k", type=int, default=10, help="idle domains for rate and memory")
    ap.add_argument("-p", "--parallel", type=int, default=4, help="parallel xl's")
    ap.add_argument("--modes", default="template,fresh")
    args = ap.parse_args()
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "pyxen")],
                   check=True)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-create-") as t:
        tmp = Path(t)
        py = python_pass(args.n)
        f_first, f_rate, f_mem = floor(build_floor(tmp), args.n)
        print(f"host: {cores} CPUs; guests: {MEM_MIB} MiB, 1 vCPU; medians of {args.n}")
        print(f"baseline python -c pass              {py * 1e3:8.1f} ms")
        print(f"baseline kvmfloor (C) first byte     {f_first * 1e3:8.1f} ms   "
              f"{f_rate:6.1f} VMs/s   PSS {f_mem.get('Pss', 0) / 1024:5.2f} MiB  "
              f"USS {uss(f_mem) / 1024:5.2f} MiB")
        for mode in args.modes.split(","):
            r = run_mode(tmp, mode == "template", args.n, args.k, args.parallel)
            vm = r["vmms"]
            pss = [m.get("Pss", 0) for m in vm]
            group = (sum(pss) + r["tpl_after"].get("Pss", 0)
                     - r["tpl_before"].get("Pss", 0)) / max(len(vm), 1)
            print(f"--- {mode}")
            for p in PATHS:
                first = r[f"xl_first_{p}"]
                print(f"xl create -c -> first byte ({p:<5})  {first * 1e3:8.1f} ms   "
                      f"({first / py:.1f}x python -c pass, {first / f_first:.0f}x kvmfloor)")
            print(f"hostd create -> first console byte   {r['rpc_first'] * 1e3:8.1f} ms   "
                  f"(no xl start-up; {r['rpc_first'] / f_first:.0f}x kvmfloor; "
                  f"create's reply at {r['rpc_reply'] * 1e3:.1f} ms)")
            for p in PATHS:
                seq, par, dst = (r[f"seq_rate_{p}"], r[f"par_rate_{p}"],
                                 r[f"destroy_rate_{p}"])
                print(f"xl create, sequential ({p:<5})        {seq:8.2f} domains/s "
                      f"({seq / cores:.2f} per core)")
                print(f"xl create, {args.parallel} xl's in parallel ({p:<5})"
                      f"{par:8.2f} domains/s ({par / cores:.2f} per core)")
                print(f"xl destroy, sequential ({p:<5})       {dst:8.2f} domains/s")
            print(f"hostd create (no xl), sequential    {r['rpc_seq_rate']:8.2f} domains/s "
                  f"({r['rpc_seq_rate'] / cores:.2f} per core)")
            print(f"hostd create (no xl), {args.parallel} clients      "
                  f"{r['rpc_par_rate']:8.2f} domains/s ({r['rpc_par_rate'] / cores:.2f} per core)")
            print(f"idle VMM x{len(vm)}: PSS median {med(pss) / 1024:5.2f} MiB, "
                  f"USS median {med([uss(m) for m in vm]) / 1024:5.2f} MiB, "
                  f"RSS median {med([m.get('Rss', 0) for m in vm]) / 1024:5.2f} MiB")
            if r["tpl_before"]:
                print(f"template PSS {r['tpl_before'].get('Pss', 0) / 1024:5.2f} MiB alone, "
                      f"{r['tpl_after'].get('Pss', 0) / 1024:5.2f} MiB with {len(vm)} children")
            print(f"per idle domain, sum of PSS          {group / 1024:8.2f} MiB   "
                  f"({group / max(f_mem.get('Pss', 1), 1):.1f}x kvmfloor's PSS)")
            if r["group_frames"]:
                per = (r["group_frames"] - r["tpl_frames"]) * 4 / max(len(vm), 1)
                print(f"per idle domain, distinct pages      {per / 1024:8.2f} MiB   "
                      f"(template + VMMs, each physical page once, less the template alone)")


if __name__ == "__main__":
    main()
