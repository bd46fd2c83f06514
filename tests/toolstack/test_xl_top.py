"""`xl top` (xentop's view) in a real terminal: tmux runs it against two guests that spin
in guest user mode; the pane is captured twice and must show both guests with changing
CPU figures; a sort key and `q` are sent as keystrokes. Batch mode (-b -i N) is checked
as plain text."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from xlhost import HELLO, REPO, Host, needs_vmm

pytestmark = [needs_vmm, pytest.mark.timeout(240)]

COLUMNS = ["NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)", "MAXMEM(k)",
           "MAXMEM(%)", "VCPUS", "NETS", "NETTX(k)", "NETRX(k)", "VBDS", "VBD_OO", "VBD_RD",
           "VBD_WR", "VBD_RSECT", "VBD_WSECT", "SSID"]


def spin_cfg(tmp_path: Path, name: str) -> str:
    f = tmp_path / f"{name}.cfg"
    f.write_text(f'name = "{name}"\ntype = "pvh"\nkernel = "{HELLO}"\nmemory = 32\n'
                 'vcpus = 1\ncmdline = "mode=spin"\n')
    return str(f)


def rows(screen: str) -> dict[str, list[str]]:
    """The domain rows of a captured screen, by name (the columns after the header)."""
    lines = screen.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:3] == COLUMNS[:3])
    assert lines[head].split() == COLUMNS, lines[head]
    out = {}
    for ln in lines[head + 1:]:
        f = ln.split()
        if len(f) == len(COLUMNS) + 1 and f[6:8] == ["no", "limit"]:  # two words
            f = f[:6] + ["no limit"] + f[8:]
        if len(f) == len(COLUMNS):
            out[f[0]] = f
    return out


@pytest.fixture
def two_spinners(host: Host, tmp_path: Path) -> Host:
    for name in ("spin1", "spin2"):
        assert host.xl("create", spin_cfg(tmp_path, name)).returncode == 0
    return host


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_xl_top_in_tmux_shows_both_guests_live(two_spinners: Host, tmp_path: Path) -> None:
    host = two_spinners
    sock = str(tmp_path / "tmux.sock")
    tmux = ["tmux", "-S", sock]
    cmd = f"cd {REPO} && env PYXEN_RUNDIR={host.root} {sys.executable} -m pyxen.cli.xl top -d 1"
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "200", "-y", "30", cmd],
                   check=True, env={k: v for k, v in host.env.items() if k != "TMUX"})

    def capture(escapes: bool = False) -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", *(["-e"] if escapes else []),
                               "-t", "top"], capture_output=True, text=True).stdout

    try:
        def both_busy() -> dict[str, list[str]] | None:
            try:
                r = rows(capture())
            except StopIteration:
                return None
            ok = all(n in r and float(r[n][3]) > 0 for n in ("spin1", "spin2"))
            return r if ok else None

        first = host.wait_for(both_busy, "xl top showing both guests busy", timeout=60)
        assert first["Domain-0"][6] == "no limit" and first["spin1"][6] == "32768"
        assert first["spin1"][1] == "-----r"  # xentop's state letters: running
        time.sleep(3)
        second = host.wait_for(both_busy, "a second frame", timeout=30)
        for n in ("spin1", "spin2"):
            assert first[n][2:4] != second[n][2:4], (n, first[n], second[n])
            assert int(second[n][2]) >= int(first[n][2])
        screen = capture()
        assert "xentop - " in screen and "Xen 4.17" in screen and "3 domains:" in screen

        # `s` four times: sorted by CPU(%) (descending), its header in reverse video
        for _ in range(4):
            subprocess.run([*tmux, "send-keys", "-t", "top", "s"], check=True)

        def sorted_by_cpu() -> bool:
            esc = capture(escapes=True)
            return "\x1b[7m" in esc and "CPU(%)" in esc.split("\x1b[7m", 1)[1][:20]

        host.wait_for(sorted_by_cpu, "the CPU(%) column selected for sorting", timeout=20)
        r = rows(capture())
        pcts = [float(f[3]) for f in r.values()]
        assert pcts == sorted(pcts, reverse=True), r

        subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True)
        host.wait_for(lambda: subprocess.run([*tmux, "has-session", "-t", "top"],
                                             capture_output=True).returncode != 0,
                      "xl top to quit on q", timeout=20)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_xl_top_batch_mode(two_spinners: Host) -> None:
    host = two_spinners
    r = host.xl("top", "-b", "-i", "2", "-d", "1", check=True)
    frames = r.stdout.split("xentop - ")[1:]
    assert len(frames) == 2, r.stdout
    for frame in frames:
        rs = rows(frame)
        assert list(rs) == ["Domain-0", "spin1", "spin2"]
        assert all(rs[n][8] == "1" and rs[n][4] == "32768" for n in ("spin1", "spin2"))
    assert host.xl("top", "-b", "-d", "0").returncode != 0
    assert host.xl("top", "-b", "-i", "0").returncode != 0


def test_xl_top_counts_the_disk_io_blkback_served(host: Host, tmp_path: Path) -> None:
    """VBDS / VBD_RD / VBD_WR / VBD_RSECT / VBD_WSECT are blkback's counters (Linux's
    statistics/ that xentop reads): the disk guest's pattern write and read-back of a
    1 MiB image show up, and `-x` lists the vbd."""
    img = tmp_path / "d.img"
    img.write_bytes(b"")
    with img.open("r+b") as f:
        f.truncate(1 << 20)
    f_cfg = tmp_path / "disky.cfg"
    f_cfg.write_text(f'name = "disky"\ntype = "pvh"\nkernel = "{HELLO}"\nmemory = 32\n'
                     f'cmdline = "mode=disk"\ndisk = [ "{img},raw,xvda,rw" ]\n')
    assert host.xl("create", str(f_cfg)).returncode == 0
    host.wait_for(lambda: "pyxen disk: vbd 51712 verify ok" in host.xl("dmesg").stdout,
                  "the guest's disk pattern check", timeout=120)
    r = host.xl("top", "-b", "-i", "1", "-d", "0.2", "-x", check=True)
    row = rows(r.stdout)["disky"]
    vbds, oo, rd, wr, rsect, wsect = (int(x) for x in row[12:18])
    assert vbds == 1 and oo == 0 and rd > 0 and wr > 0, row
    # the guest wrote the whole 1 MiB image and read it back: 2048 sectors each way
    assert rsect >= 2048 and wsect >= 2048, row
    assert any(ln.startswith("VBD 51712") and f"RD: {rd:>8}" in ln
               for ln in r.stdout.splitlines()), r.stdout
