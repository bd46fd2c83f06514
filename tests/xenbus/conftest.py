"""Fixtures of the PV console / xenbus suite. Real-guest tests use the toolstack suite's
test host (tests/toolstack: xlhost.Host, the `host` fixture), imported, not copied, and
the ring "guest" of the xenstore suite (tests/xenstore/xs_guest.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for sub in ("toolstack", "xenstore"):
    p = str(TESTS / sub)
    if p not in sys.path:
        sys.path.append(p)

_spec = importlib.util.spec_from_file_location("_pyxen_toolstack_conftest",
                                               TESTS / "toolstack" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_toolstack_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_toolstack_conftest)

host = _toolstack_conftest.host  # its own $PYXEN_RUNDIR; nothing left behind at teardown


@pytest.fixture(scope="session")
def guests() -> Path:
    subprocess.run(["make", "-s", "-C", str(TESTS.parent / "guests")], check=True)
    return TESTS.parent / "guests" / "build"
