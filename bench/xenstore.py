"""xenstored throughput over the Unix socket, against a framing-only echo server.

    python bench/xenstore.py [--seconds 1.5]

Prints reads/s, writes/s and committed transactions/s (start, read, write, commit) with
1 and with 8 concurrent client processes, for pyxen's xenstored (journal on, as
deployed, and writes with the journal off) and for an echo server that only frames
messages on the same socket type, measured in the same run; the ratio is
xenstored / echo. Both servers are separate processes; clients are separate processes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pyxen.xenstore.client import XenstoreClient  # noqa: E402
from pyxen.xenstore.wire import HEADER, Op, XenstoreError  # noqa: E402


def echo_server(path: str) -> None:
    """Frame-level echo: parse each header, send the same header and payload back."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(64)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    bufs: dict[socket.socket, bytearray] = {}

    def accept(_s: socket.socket) -> None:
        c, _ = srv.accept()
        c.setblocking(False)
        bufs[c] = bytearray()
        sel.register(c, selectors.EVENT_READ, serve)

    def serve(c: socket.socket) -> None:
        data = c.recv(65536)
        if not data:
            sel.unregister(c)
            c.close()
            del bufs[c]
            return
        buf = bufs[c]
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 16:
            op, rid, tx, ln = HEADER.unpack_from(buf, pos)
            if len(buf) - pos < 16 + ln:
                break
            out.append(bytes(buf[pos:pos + 16 + ln]))
            pos += 16 + ln
        del buf[:pos]
        if out:
            c.sendall(b"".join(out))

    sel.register(srv, selectors.EVENT_READ, accept)
    while True:
        for key, _ in sel.select():
            key.data(key.fileobj)


def _client(path: str, kind: str, seconds: float, idx: int, q: mp.Queue) -> None:
    c = XenstoreClient(path)
    key = f"/bench/c{idx}/key".encode()
    c.call(Op.WRITE, key + b"\0" + b"0")
    n = conflicts = 0
    end = time.perf_counter() + seconds
    if kind == "read":
        payload = key + b"\0"
        while time.perf_counter() < end:
            for _ in range(50):
                c.call(Op.READ, payload)
            n += 50
    elif kind == "write":
        payload = key + b"\0" + b"some-value-0123456789"
        while time.perf_counter() < end:
            for _ in range(50):
                c.call(Op.WRITE, payload)
            n += 50
    else:
        while time.perf_counter() < end:
            tx = int(c.call(Op.TRANSACTION_START, b"\0").rstrip(b"\0") or b"1")
            v = c.call(Op.READ, key + b"\0", tx)
            c.call(Op.WRITE, key + b"\0" + v[:8] + b"1", tx)
            try:
                c.call(Op.TRANSACTION_END, b"T\0", tx)
                n += 1
            except XenstoreError:
                conflicts += 1
    c.close()
    q.put((n, conflicts))


def measure(path: str, kind: str, nclients: int, seconds: float) -> float:
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_client, args=(path, kind, seconds, i, q))
             for i in range(nclients)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    total = sum(r[0] for r in results)
    return total / seconds  # every client issues requests for exactly `seconds`


def _wait_socket(path: str) -> None:
    for _ in range(200):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no server on {path}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.5)
    a = ap.parse_args()
    mp.set_start_method("fork")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        servers = {}
        xs = subprocess.Popen([sys.executable, "-m", "pyxen.xenstore", "--state-dir",
                               f"{d}/xs"], env=env, stdout=subprocess.DEVNULL)
        xs_nj = subprocess.Popen([sys.executable, "-m", "pyxen.xenstore", "--state-dir",
                                  f"{d}/xs-nojournal", "--no-persist"], env=env,
                                 stdout=subprocess.DEVNULL)
        echo = mp.Process(target=echo_server, args=(f"{d}/echo.sock",), daemon=True)
        echo.start()
        servers = {"xenstored": f"{d}/xs/socket", "echo": f"{d}/echo.sock"}
        try:
            for p in (*servers.values(), f"{d}/xs-nojournal/socket"):
                _wait_socket(p)
            print(f"pyxen xenstored vs framing-only echo server, Unix socket, "
                  f"{a.seconds:.1f} s per figure, {os.cpu_count()} CPUs")
            print(f"{'operation':<26}{'clients':>8}{'xenstored/s':>14}{'echo/s':>12}"
                  f"{'ratio':>8}")
            for kind, label in (("read", "reads"), ("write", "writes"),
                                ("tx", "committed transactions")):
                for n in (1, 8):
                    x = measure(servers["xenstored"], kind, n, a.seconds)
                    e = measure(servers["echo"], kind, n, a.seconds)
                    print(f"{label:<26}{n:>8}{x:>14.0f}{e:>12.0f}{x / e:>8.2f}", flush=True)
            nj = measure(f"{d}/xs-nojournal/socket", "write", 1, a.seconds)
            wj = measure(servers["xenstored"], "write", 1, a.seconds)
            print(f"journal cost: writes/s, 1 client: {wj:.0f} with journal, "
                  f"{nj:.0f} without ({wj / nj:.2f})")
        finally:
            for p in (xs, xs_nj):
                p.terminate()
                p.wait(10)
            echo.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
