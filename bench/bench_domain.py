"""A domain for a benchmark: one test guest booted through the VMM's real entry point.

Both benches need the same thing: build the guests, start `python -m pyxen.vmm` in a
throw-away rundir, unpause it and read its control events until the guest shuts down.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[1]


class BenchDomain:
    def __init__(self, control: BinaryIO) -> None:
        self.control = control

    def request(self, req: dict[str, Any]) -> None:
        """Send a control request; its reply arrives among the events."""
        self.control.write(json.dumps(req).encode() + b"\n")
        self.control.flush()

    def events(self) -> Iterator[dict[str, Any]]:
        """Control events and replies, up to and including the guest's shutdown."""
        for raw in self.control:
            ev = json.loads(raw)
            yield ev
            if ev.get("event") == "shutdown":
                return


@contextmanager
def bench_domain(guest: str, cmdline: str) -> Iterator[BenchDomain]:
    """Boot guests/build/<guest>.elf with `cmdline`, unpaused; destroyed on exit."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-") as tmp:
        ddir = Path(tmp) / "domains" / "1"
        ddir.mkdir(parents=True)
        cfg = ddir / "config.json"
        cfg.write_text(json.dumps({
            "name": "bench", "type": "pvh", "memory": 32, "vcpus": 1, "ramdisk": None,
            "kernel": str(ROOT / "guests" / "build" / f"{guest}.elf"), "cmdline": cmdline}))
        env = dict(os.environ, PYXEN_RUNDIR=tmp,
                   PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-m", "pyxen.vmm", "--domid", "1",
                                 "--config", str(cfg)], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            assert proc.stdout is not None
            built = json.loads(proc.stdout.readline() or b"{}")
            if built.get("event") != "built":
                raise SystemExit(f"bench: {built.get('message', 'the VMM did not start')}")
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(ddir / "control.sock"))
                dom = BenchDomain(s.makefile("rwb"))
                dom.request({"id": 1, "op": "unpause"})
                yield dom
                dom.request({"id": 0, "op": "destroy"})
                proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
