"""xl save / xl restore of the save test guest (guests/savetest.c), beside the time to
write and read the same number of bytes to/from a file in the same directory, measured
in the same run (these machines are noisy: compare the ratios).

    .venv/bin/python bench/saverestore.py [--memory MIB] [--runs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "toolstack"))
from xlhost import Host  # noqa: E402


def baseline(path: Path, nbytes: int) -> tuple[float, float]:
    """Write then read nbytes (1 MiB blocks, fsync'd as the save is)."""
    block = os.urandom(1 << 20)
    t0 = time.monotonic()
    with open(path, "wb") as f:
        for _ in range(nbytes >> 20):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    t_write = time.monotonic() - t0
    t0 = time.monotonic()
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return t_write, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyxen-bench-sr-", dir=args.dir))
    host = Host(root=work / "run", workdir=ROOT)
    cfg = work / "st.cfg"
    cfg.write_text(f'name = "st"\ntype = "pvh"\nkernel = "{ROOT}/guests/build/savetest.elf"\n'
                   f'memory = {args.memory}\nvcpus = 1\ncmdline = "mode=pv"\n')
    img = work / "st.img"
    try:
        t0 = time.monotonic()
        host.xl("create", str(cfg), check=True)
        t_create = time.monotonic() - t0
        print(f"baseline: xl create of the same guest {t_create:.2f} s (VMM start-up and "
              "build: what a restore also pays)")
        for run in range(args.runs):
            host.wait_for(lambda: "savetest: ready" in (work / "run" / "console" /
                                                      "guest-st.log").read_text(errors="replace")
                          if (work / "run" / "console" / "guest-st.log").exists() else False,
                          "the guest")
            time.sleep(0.5)
            t0 = time.monotonic()
            host.xl("save", "st", str(img), check=True)
            t_save = time.monotonic() - t0
            size = img.stat().st_size
            t0 = time.monotonic()
            host.xl("restore", str(img), check=True)
            t_restore = time.monotonic() - t0
            dmesg = host.xl("dmesg", check=True).stdout
            vmm_save = re.findall(r"saved to .*? in ([0-9.]+) s", dmesg)[-1]
            vmm_restore = re.findall(r"restored \d+ pages in ([0-9.]+) s", dmesg)[-1]
            w, r = baseline(work / "baseline.bin", size)
            print(f"run {run}: image {size} bytes ({size / 2**20:.1f} MiB) for a "
                  f"{args.memory} MiB guest")
            print(f"  xl save     {t_save:6.2f} s (hostd: suspend + pause + VMM write {vmm_save} s)"
                  f"   baseline write+fsync {w:5.2f} s   ratio {t_save / w:5.1f}")
            print(f"  xl restore  {t_restore:6.2f} s (VMM read + load {vmm_restore} s)"
                  f"        baseline read        {r:5.2f} s   ratio {t_restore / r:5.1f}"
                  f"   vs xl create {t_restore / t_create:4.1f}")
    finally:
        host.stop()
        for p in (img, work / "baseline.bin", cfg):
            p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
