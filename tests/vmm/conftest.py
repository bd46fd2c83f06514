"""Fixtures of the VMM suite: real guests (make -C guests), real /dev/kvm."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vmm_helpers import GUESTS, Domain, spawn_vmm


@pytest.fixture(scope="session")
def guests() -> Path:
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)
    return GUESTS / "build"


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


@pytest.fixture
def boot(rundir: Path, guests: Path) -> Iterator[Callable[..., Domain]]:
    """boot(cmdline="", vcpus=1, domid=N, **config) -> Domain, paused, client connected."""
    procs: list[subprocess.Popen] = []
    counter = iter(range(1, 1000))

    def _boot(cmdline: str = "", vcpus: int = 1, domid: int | None = None,
              **cfg: Any) -> Domain:
        domid = domid if domid is not None else next(counter)
        config = {"name": f"test{domid}", "type": "pvh", "memory": 32, "vcpus": vcpus,
                  "kernel": str(guests / "hello.elf"), "ramdisk": None, "cmdline": cmdline,
                  "on_poweroff": "destroy"}
        config.update(cfg)
        proc, line, ddir = spawn_vmm(rundir, domid, config)
        procs.append(proc)
        assert line.get("event") == "built", line
        return Domain(proc, ddir, domid)

    yield _boot
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
