"""Each toolstack test gets its own host: its own $PYXEN_RUNDIR, so its own hostd,
xenstored and VMMs. At teardown hostd gets SIGTERM and nothing may be left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from xlhost import REPO, Host


@pytest.fixture
def host(tmp_path: Path):
    h = Host(root=tmp_path / "run", workdir=REPO)
    yield h
    h.stop()
