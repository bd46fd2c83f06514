"""Test hosts for the toolstack (helpers; the fixture is in conftest.py): each test gets its own $PYXEN_RUNDIR (its own hostd,
xenstored and VMMs), driven through the real `xl` in separate processes. At teardown
hostd gets SIGTERM, and nothing may be left: no process started for that host, no
sockets, no domain directories."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "guests" / "build" / "hello.elf"
NOPVH = REPO / "guests" / "build" / "nopvh.elf"


def have_vmm() -> bool:
    return importlib.util.find_spec("pyxen.vmm") is not None


def have_xenstored() -> bool:
    with contextlib.suppress(ModuleNotFoundError):
        return importlib.util.find_spec("pyxen.xenstore.server") is not None
    return False


needs_vmm = pytest.mark.skipif(
    not (have_vmm() and HELLO.exists() and os.path.exists("/dev/kvm")),
    reason="needs the VMM (pyxen.vmm), guests/build/hello.elf (make -C guests) and /dev/kvm")
needs_xenstored = pytest.mark.skipif(not have_xenstored(),
                                     reason="needs pyxen.xenstore.server")


def cgroups_of(root: Path) -> list[Path]:
    """The cgroups hostd made for this rundir (toolstack/cgroups.py: one base group per
    hierarchy, a d<N> group per domain in it), v1 and v2 alike."""
    from pyxen.toolstack.cgroups import base_name
    name = base_name(root)
    cg = Path("/sys/fs/cgroup")
    found = {d.resolve(): d for d in (cg / name, *cg.glob(f"*/{name}")) if d.is_dir()}
    return sorted(found.values())


def remove_cgroups(groups: list[Path], wait: bool) -> None:
    """Domain groups first, then the base; a task killed just now may still be leaving."""
    deadline = time.monotonic() + (10 if wait else 0)
    for base in groups:
        for d in [*sorted(base.glob("d*/")), base]:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)


def processes_of(root: Path) -> list[tuple[int, str]]:
    """Processes whose environment names this test host's rundir (hostd, VMMs, xl)."""
    marker = f"PYXEN_RUNDIR={root}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            if marker in env.split(b"\0"):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                stat = Path(f"/proc/{entry}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                found.append((int(entry), cmd.decode(errors="replace")))
        except OSError:
            continue
    return found


@dataclass
class Host:
    root: Path
    workdir: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYXEN_RUNDIR=str(self.root))
        env.pop("XENSTORED_PATH", None)
        return env

    def xl(self, *args: str, input: str | None = None, timeout: float = 90,
           check: bool = False) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "pyxen.cli.xl", *args], cwd=self.workdir,
                           env=self.env, input=input if input is not None else "",
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"xl {' '.join(args)}: rc {r.returncode}: {r.stderr}"
        return r

    def xenstore(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, XENSTORED_PATH=str(self.root / "xenstored" / "socket"))
        return subprocess.run([tool, *args], env=env, capture_output=True, text=True,
                              timeout=30)

    def list(self) -> dict[str, dict[str, str]]:
        """`xl list` parsed by its columns: name -> {id, mem, vcpus, state, time}."""
        r = self.xl("list", check=True)
        lines = r.stdout.splitlines()
        assert lines[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
        out = {}
        for line in lines[1:]:
            name = line[:40].rstrip()
            rest = line[40:].split()
            out[name] = dict(zip(("id", "mem", "vcpus", "state", "time"), rest, strict=True))
        return out

    def wait_for(self, pred, what: str, timeout: float = 60):  # noqa: ANN001
        """Poll until pred() is truthy; a deadline, not a timing threshold."""
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def hostd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "hostd.pid").read_text())
        return None

    def xenstored_pid(self) -> int | None:
        """xenstored is its own process (it outlives hostd: toolstack/xenstored.py)."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "xenstored" / "pid").read_text())
        return None

    def template_pid(self) -> int | None:
        """The VMM template (a fork server: vmm/template.py) is hostd's, like xenstored."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "template" / "pid").read_text())
        return None

    def assert_clean(self) -> None:
        """No domain left: only Domain-0 listed, no domain dirs, only hostd, xenstored and
        the VMM template running."""
        assert list(self.list()) == ["Domain-0"]
        domains = self.root / "domains"
        assert not domains.exists() or not list(domains.iterdir()), list(domains.iterdir())
        daemons = (self.hostd_pid(), self.xenstored_pid(), self.template_pid())
        procs = [p for p in processes_of(self.root) if p[0] not in daemons]
        assert procs == [], procs

    def stop(self) -> None:
        pid = self.hostd_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        deadline = time.monotonic() + 10
        while processes_of(self.root) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = processes_of(self.root)
        for p, _ in left:  # never leave them behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        groups = cgroups_of(self.root)
        remove_cgroups(groups, wait=bool(left))
        assert left == [], f"processes left behind: {left}"
        assert groups == [], f"hostd left its cgroups behind: {groups}"
        assert not (self.root / "pyxend.sock").exists()
        assert not (self.root / "xenstored" / "socket").exists()
        domains = self.root / "domains"
        assert not domains.exists() or not list(domains.iterdir())
