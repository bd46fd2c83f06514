"""Live migration of a 512 MiB guest that dirties memory at a chosen rate, between two
pyxen hosts on this machine (two $PYXEN_RUNDIRs, two hostds), with `xl migrate -s env`.

Prints, from one run:
- downtime: from the moment the source VMM pauses the guest (end of pre-copy) to the
  moment the target's hostd has unpaused it (both `time.time()` on this machine, from
  `xl migrate --debug` and the receiver's `-d` lines);
- total: the wall time of `xl migrate` (banner to "Migration successful.");
- the pre-copy rounds (pages per round) and the pages sent with the guest paused;
- baseline: the time for the same source VMM to write 512 MiB of guest memory into the
  same kind of transport (`sh -c "exec ..."` pipe) read by a Python process on the other
  end (`migrate_probe`: no records, no restore), in the same run, and the ratios.

    .venv/bin/python bench/migrate.py [--rate MIB_PER_S] [--memory MIB] [--region MIB]

--rate 0 is an idle guest (it fills its region once, then writes one page a second).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "guests" / "build" / "hello.elf"
READER = ("import os,sys\nn=0\nwhile True:\n b=os.read(0,1<<20)\n if not b: break\n"
          " n+=len(b)\nsys.stderr.write(str(n))\n")


class BenchHost:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = dict(os.environ, PYXEN_RUNDIR=str(root),
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def xl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyxen.cli.xl", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def request(self, op: str, **args) -> dict:
        """One hostd request on its socket (what xl does)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.root / "pyxend.sock"))
            s.sendall(json.dumps({"id": 1, "op": op, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply

    def stop(self) -> None:
        try:
            pid = int((self.root / "hostd.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(600):
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ValueError):
            pass


def baseline(src: BenchHost, domid: int, nbytes: int) -> float:
    """The source VMM writes nbytes of guest memory into a pipe to `sh -c exec python`."""
    child = subprocess.Popen(["sh", "-c", f"exec {sys.executable} -c '{READER}'"],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdin is not None
    spec = {"pid": os.getpid(), "fd": child.stdin.fileno()}
    t0 = time.monotonic()
    src.request("migrate_probe", domain=domid, stream=spec, bytes=nbytes)
    child.stdin.close()
    got = int(child.stderr.read() or 0)  # type: ignore[union-attr]
    child.wait()
    elapsed = time.monotonic() - t0
    assert got == nbytes, (got, nbytes)
    return elapsed


STEPS = (  # (label, pattern) in xl migrate --debug's and migrate-receive -d's lines
    ("source: stream done", r"stream done at ([\d.]+)"),
    ("source xl has hostd's reply", r"hostd replied at ([\d.]+)"),
    ("source renamed", r"renamed at ([\d.]+)"),
    ("target VMM read END", r"image end at ([\d.]+)"),
    ("target VMM restored", r"VMM restored at ([\d.]+)"),
    ("target hostd has it", r"hostd at ([\d.]+)"),
    ("target hostd replies", r"hostd at [\d.]+, replied at ([\d.]+)"),
    ("target xl: ready sent", r"target: restored at ([\d.]+)"),
    ("source xl: ready read", r"target ready at ([\d.]+)"),
    ("target xl: go read", r"permission at ([\d.]+)"),
    ("target hostd: go", r"go at ([\d.]+)"),
    ("target hostd: unpaused", r"unpaused at ([\d.]+)"),
)


def breakdown(stderr: str, paused: float) -> str:
    """Each step's time.time() after the pause, in ms, from both ends' debug lines."""
    parts = []
    for label, pattern in STEPS:
        m = re.search(pattern, stderr)
        if m:
            parts.append(f"  +{(float(m.group(1)) - paused) * 1000:6.1f} ms  {label}")
    return "after the pause (time.time() on both ends):\n" + "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=16.0, help="MiB/s the guest dirties")
    ap.add_argument("--memory", type=int, default=512, help="guest memory, MiB")
    ap.add_argument("--region", type=int, default=None,
                    help="MiB the guest dirties (default: memory - 16)")
    args = ap.parse_args()
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    region = args.region or args.memory - 16
    pages_per_s = max(1, int(args.rate * 256))
    tmp = Path(tempfile.mkdtemp(prefix="pyxen-bench-mig-"))
    a, b = BenchHost(tmp / "hostA"), BenchHost(tmp / "hostB")
    try:
        cfg = tmp / "bench.cfg"
        cfg.write_text(f'name = "migbench"\ntype = "pvh"\nkernel = "{HELLO}"\n'
                       f"memory = {args.memory}\nvcpus = 1\n"
                       f'cmdline = "mode=dirty mib={region} rate={pages_per_s} report=500 '
                       'hvc=0"\n')
        r = a.xl("create", str(cfg))
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 1
        b.xl("list")  # the target's hostd
        domid = int(a.request("list", domains=["migbench"])["domains"][0]["domid"])
        deadline = time.monotonic() + 120  # the guest has filled its region
        while "dirty: ready" not in "".join(a.request("dmesg", clear=False)["lines"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the guest did not come up")
            time.sleep(0.2)
        time.sleep(1.0)
        nbytes = args.memory << 20
        base = baseline(a, domid, nbytes)
        t0 = time.monotonic()
        r = a.xl("migrate", "--debug", "-s", "env", "migbench", f"PYXEN_RUNDIR={b.root}")
        total = time.monotonic() - t0
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 1
        paused = float(re.search(r"paused at ([\d.]+)", r.stderr).group(1))  # type: ignore[union-attr]
        done = float(re.search(r"stream done at ([\d.]+)", r.stderr).group(1))  # type: ignore[union-attr]
        unpaused = float(re.search(r"unpaused at ([\d.]+)", r.stderr).group(1))  # type: ignore[union-attr]
        phases = re.search(r"domain suspended: (.*)", r.stderr)
        rounds = re.search(r"(\d+) live iteration\(s\) (\[[\d, ]*\]), (\d+) page", r.stderr)
        assert rounds is not None
        base2 = baseline(b, int(b.request("list", domains=["migbench"])["domains"][0]["domid"]),
                         nbytes)
        downtime = unpaused - paused
        print(f"guest: {args.memory} MiB, dirtying {region} MiB at {args.rate:g} MiB/s "
              f"({pages_per_s} pages/s)")
        print(f"pre-copy: {rounds.group(1)} live round(s), pages {rounds.group(2)}; "
              f"{rounds.group(3)} pages sent with the guest paused")
        print(f"downtime: {downtime * 1000:.1f} ms (paused -> running on the target; "
              f"of which last pages + state + end: {(done - paused) * 1000:.1f} ms, "
              f"restore end + handshake + unpause: {(unpaused - done) * 1000:.1f} ms)")
        print(f"stopped phase on the source: {phases.group(1) if phases else '?'}")
        print(breakdown(r.stderr, paused))
        print(f"total:    {total:.2f} s (xl migrate, banner to 'Migration successful.')")
        print(f"baseline: {base:.2f} s to copy {args.memory} MiB source VMM -> receiver "
              f"({nbytes / base / 2**20:.0f} MiB/s); again from the target's VMM after: "
              f"{base2:.2f} s")
        print(f"ratio:    total / baseline = {total / base:.2f}")
        b.xl("destroy", "migbench")
        return 0
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
