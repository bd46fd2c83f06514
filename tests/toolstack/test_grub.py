"""GRUB for Xen PVH (Debian's grub-xen-bin, built by scripts/setup with grub-mkimage -O
i386-xen_pvh): a real 32-bit Xen guest built by other people, booted unchanged by `xl`.

It runs in 32-bit protected mode and uses the compat ABI throughout (memory map,
add_to_physmap of its grant table and shared info into e820 holes, grant setup, the
xenstore and console rings, event channels). All of its code is guest kernel-mode code,
which this host's KVM emulates (PLATFORM.md): the deadlines are generous, never timing
assertions.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from xlhost import REPO, Host, needs_vmm

GRUB = REPO / "guests" / "build" / "grub-pvh.bin"
DISK = REPO / "guests" / "build" / "grub-disk.img"
BOOT_DEADLINE = 300.0

pytestmark = [needs_vmm,
              pytest.mark.skipif(not GRUB.exists(), reason="needs guests/build/grub-pvh.bin "
                                 "(scripts/setup builds it with guests/grub/mkgrub)"),
              pytest.mark.timeout(600)]


# GRUB's terminal moves the cursor with ANSI sequences (even between echoed characters):
# markers are looked for in the text without them and without carriage returns.
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Console:
    """The domain's console stream (console.sock), read up to markers with a deadline."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.raw = b""
        self.data = b""  # self.raw without terminal control sequences

    def expect(self, marker: bytes, after: int = 0, timeout: float = BOOT_DEADLINE) -> int:
        """Wait until marker appears at or after offset `after`; return the end offset."""
        deadline = time.monotonic() + timeout
        while True:
            i = self.data.find(marker, after)
            if i >= 0:
                return i + len(marker)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} on the console; got {self.data[-2000:]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"console closed before {marker!r}: {self.data[-2000:]!r}")
            self.raw += chunk
            self.data = ANSI.sub(b"", self.raw)

    def type(self, text: str) -> int:
        """Type a command line, a few characters at a time as a person would."""
        mark = len(self.data)
        for i in range(0, len(text), 4):
            self.sock.sendall(text[i:i + 4].encode())
            time.sleep(0.05)
        self.sock.sendall(b"\r")
        return mark

    def close(self) -> None:
        self.sock.close()


def boot(host: Host, tmp_path: Path, extra: str = "") -> Console:
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(f'name = "grub"\ntype = "pvh"\nkernel = "{GRUB}"\nmemory = 64\n{extra}')
    host.xl("create", str(cfg), check=True)
    domid = host.list()["grub"]["id"]
    return Console(host.root / "domains" / domid / "console.sock")


def test_grub_boots_to_its_prompt_and_runs_commands(host: Host, tmp_path: Path) -> None:
    con = boot(host, tmp_path)
    try:
        end = con.expect(b"grub>")
        mark = con.type("echo hello")
        # GRUB echoes what is typed, then prints the command's output on its own line.
        con.expect(b"echo hello", after=max(mark, end))
        con.expect(b"\nhello", after=max(mark, end))
        con.expect(b"grub>", after=max(mark, end))
    finally:
        con.close()
    dmesg = host.xl("dmesg", check=True).stdout
    assert "crash" not in dmesg.lower(), dmesg
    host.xl("destroy", "grub", check=True)
    host.assert_clean()


def test_grub_reads_an_ext2_disk(host: Host, tmp_path: Path) -> None:
    """GRUB's 32-bit blkfront (x86_32 blkif protocol) on pyxen's blkback: the menu from
    the disk's /boot/grub/grub.cfg, then `ls` and `cat` at GRUB's command line."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(DISK.read_bytes())
    con = boot(host, tmp_path, f'disk = ["{disk},raw,xvda,rw"]\n')
    try:
        end = con.expect(b"pyxen test entry")
        con.sock.sendall(b"c")  # GRUB's menu: 'c' opens the command line
        end = con.expect(b"grub>", after=end)
        mark = con.type("ls")
        con.expect(b"(xen/xvda)", after=max(mark, end))
        end = con.expect(b"grub>", after=max(mark, end))
        mark = con.type("cat (xen/xvda)/hello.txt")
        con.expect(b"\nhello from an ext2 disk served by pyxen's blkback", after=max(mark, end))
    finally:
        con.close()
    host.xl("destroy", "grub", check=True)
    host.assert_clean()
