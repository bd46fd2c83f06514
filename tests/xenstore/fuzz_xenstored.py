"""Fuzz xenstored: random bytes and random well-formed messages, over sockets and rings.

    python tests/xenstore/fuzz_xenstored.py --seconds 60

Prints how many inputs ran. After every batch the daemon must still answer a normal
client and its tree must pass CONTROL check; any hang or crash fails the run. The
pytest test in test_fuzz.py runs a bounded number of the same inputs.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pyxen.xenstore import RingTransport, XenstoreClient, XenstoreServer  # noqa: E402
from pyxen.xenstore.wire import HEADER, Op  # noqa: E402

SEGMENTS = [b"a", b"b", b"local", b"domain", b"0", b"5", b"x" * 40, b"@introduceDomain",
            b"", b"..", b"bad char", b"\xff", b"device", b"vif"]
WORDS = [b"T", b"F", b"0", b"5", b"4294967295", b"-1", b"n5", b"r0", b"b1", b"w65535",
         b"print", b"quota", b"log", b"help", b"check", b"watches", b"7", b"@releaseDomain"]


def random_path(rng: random.Random) -> bytes:
    segs = [rng.choice(SEGMENTS) for _ in range(rng.randint(0, 5))]
    p = b"/".join(segs)
    return (b"/" + p) if rng.random() < 0.8 else p


def random_message(rng: random.Random, tx_ids: list[int]) -> bytes:
    """A well-framed message: real or bogus op, plausible or hostile arguments."""
    op = rng.choice(list(Op)) if rng.random() < 0.9 else rng.randint(0, 0xFFFF)
    args = []
    for _ in range(rng.randint(0, 4)):
        args.append(random_path(rng) if rng.random() < 0.6 else rng.choice(WORDS))
    payload = b"\0".join(args)
    if rng.random() < 0.85:
        payload += b"\0"
    if op == Op.WRITE and rng.random() < 0.5:
        payload = random_path(rng) + b"\0" + rng.randbytes(rng.randint(0, 300))
    if op == Op.CONTROL and rng.random() < 0.2:
        payload = b"quota\0nodes\0" + str(rng.randint(1, 5000)).encode() + b"\0"
    payload = payload[:4096]
    tx = rng.choice(tx_ids + [0, 0, 0, rng.randint(0, 0xFFFFFFFF)])
    return HEADER.pack(op, rng.randint(0, 0xFFFFFFFF), tx, len(payload)) + payload


def drain(s: socket.socket) -> list[int]:
    """Read what is there; collect transaction ids from TRANSACTION_START replies."""
    ids = []
    try:
        data = s.recv(1 << 20)
    except (BlockingIOError, OSError):
        return ids
    pos = 0
    while len(data) - pos >= 16:
        op, _r, _t, ln = HEADER.unpack_from(data, pos)
        body = data[pos + 16:pos + 16 + ln]
        if op == Op.TRANSACTION_START and body[:-1].isdigit():
            ids.append(int(body[:-1]))
        pos += 16 + ln
    return ids


class Fuzzer:
    def __init__(self, server: XenstoreServer, seed: int) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.inputs = 0
        self.domu_sock = server.state_dir / "fuzz-dom5.sock"
        server.introduce_domain(5)
        server.listen_as_domain(5, self.domu_sock)

    def _sock(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        path = (self.server.socket_path if self.rng.random() < 0.6 else
                self.domu_sock if self.rng.random() < 0.7 else self.server.ro_socket_path)
        s.connect(str(path))
        s.setblocking(False)
        return s

    def random_bytes_batch(self, n: int) -> None:
        for _ in range(n):
            s = self._sock()
            try:
                s.send(self.rng.randbytes(self.rng.randint(1, 200)))
            except OSError:
                pass
            drain(s)
            s.close()
            self.inputs += 1

    def messages_batch(self, n: int) -> None:
        s = self._sock()
        tx_ids: list[int] = []
        for i in range(n):
            msg = random_message(self.rng, tx_ids)
            if self.rng.random() < 0.02:  # a broken frame mid-stream
                msg = msg[: self.rng.randint(1, max(1, len(msg) - 1))] + self.rng.randbytes(20)
            try:
                s.send(msg)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                s.close()
                s = self._sock()
            self.inputs += 1
            if i % 8 == 0:
                time.sleep(0)
                tx_ids += drain(s)
        s.close()

    def ring_batch(self, n: int) -> None:
        import mmap
        import os

        fd = os.memfd_create("fuzz-ring")
        os.ftruncate(fd, 4096)
        page = mmap.mmap(fd, 4096)
        os.close(fd)
        ring = RingTransport(page, lambda: None)
        domid = self.rng.randint(10, 20)
        self.server.introduce_domain(domid, ring)
        for _ in range(n):
            if self.rng.random() < 0.5:
                off = self.rng.randrange(0, 2048 + 28)
                page[off:off + 8] = self.rng.randbytes(8)[: len(page[off:off + 8])]
            else:
                msg = random_message(self.rng, [])
                prod = int.from_bytes(page[2052:2056], "little")
                for j, b in enumerate(msg[:1024]):
                    page[(prod + j) & 1023] = b
                page[2052:2056] = ((prod + min(len(msg), 1024)) & 0xFFFFFFFF).to_bytes(4, "little")
            page[2056:2060] = page[2060:2064]  # the "guest" consumes responses
            ring.kick()
            self.inputs += 1
        self.server.release_domain(domid)

    def check_alive(self, client: XenstoreClient) -> None:
        client.write("/fuzz-health", "ok")
        assert client.read("/fuzz-health") == b"ok"
        assert client.control("check") == "OK"


def run(seconds: float | None, count: int | None, seed: int = 1) -> int:
    with tempfile.TemporaryDirectory() as d:
        server = XenstoreServer(Path(d) / "xs").start()
        try:
            fz = Fuzzer(server, seed)
            client = XenstoreClient(server.socket_path)
            start = time.monotonic()
            while True:
                fz.random_bytes_batch(20)
                fz.messages_batch(300)
                fz.ring_batch(100)
                client.control("quota", "nodes", "1000")
                fz.check_alive(client)
                if count is not None and fz.inputs >= count:
                    break
                if seconds is not None and time.monotonic() - start >= seconds:
                    break
            client.close()
            return fz.inputs
        finally:
            server.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    t0 = time.monotonic()
    n = run(a.seconds, None, a.seed)
    print(f"fuzz_xenstored: {n} inputs in {time.monotonic() - t0:.1f} s, daemon alive, "
          f"tree consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
