"""The save image format's cost: a 512 MiB image written by SaveWriter and read back by
SaveReader through a pipe between two threads, beside a plain 512 MiB copy through a pipe
in the same run (the baseline). Usage: .venv/bin/python bench/savestream.py [MiB]"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time

from pyxen.toolstack.migration import PageData, SaveReader, SaveWriter

PAGE = 4096
BATCH = 1024
CONFIG = {"c_info": {"type": "pvh", "name": "bench"}, "b_info": {}}


def hvm_blob() -> bytes:
    header = struct.pack("<IIQII", 0x54381286, 1, 0, 0, 0)
    return struct.pack("<HHI", 1, 0, len(header)) + header + struct.pack("<HHI", 0, 0, 0)


def pipe_run(produce, consume) -> float:
    r, w = os.pipe()
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: produce(os.fdopen(w, "wb")))
    th.start()
    with os.fdopen(r, "rb") as f:
        consume(f)
    th.join()
    return time.perf_counter() - t0


def main() -> None:
    npages = int(sys.argv[1] if len(sys.argv) > 1 else 512) * 256
    src = memoryview(bytearray(os.urandom(PAGE)) * npages)
    dst = memoryview(bytearray(npages * PAGE))

    def raw_out(f) -> None:
        with f:
            for s in range(0, npages, BATCH):
                f.write(src[s * PAGE:(s + BATCH) * PAGE])

    def raw_in(f) -> None:
        off = 0
        while n := f.readinto(dst[off:off + (4 << 20)]):
            off += n

    def stream_out(f) -> None:
        with f:
            w = SaveWriter(f, CONFIG)
            w.begin()
            for s in range(0, npages, BATCH):
                n = min(BATCH, npages - s)
                w.page_data(range(s, s + n), src[s * PAGE:(s + n) * PAGE])
            w.tsc_info(0, 0, 0, 0)
            w.hvm_context(hvm_blob())
            w.finish()

    def stream_in(f) -> None:
        r = SaveReader(f)
        r.begin()
        for rec in r.records():
            if isinstance(rec, PageData):
                for pfn, run in rec.runs():
                    dst[pfn * PAGE:pfn * PAGE + run.nbytes] = run

    zero = bytes(4 << 20)

    def clear() -> None:  # also faults dst in, so neither run pays for that
        for off in range(0, dst.nbytes, len(zero)):
            dst[off:off + len(zero)] = zero[:dst.nbytes - off]

    clear()
    base = pipe_run(raw_out, raw_in)
    assert dst == src
    clear()
    t = pipe_run(stream_out, stream_in)
    assert dst == src
    mib = npages // 256
    print(f"plain pipe copy, {mib} MiB (baseline): {base:.3f} s ({mib / base:.0f} MiB/s)")
    print(f"save image write + read, {mib} MiB:    {t:.3f} s ({mib / t:.0f} MiB/s)")
    print(f"ratio: {t / base:.2f}")


if __name__ == "__main__":
    main()
