"""Fixtures of the PV console / xenbus suite: `host` comes from tests/conftest.py (the
toolstack suite's test host); the ring "guest" of the xenstore suite is
tests/xenstore/xs_guest.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "xenstore") not in sys.path:
    sys.path.append(str(TESTS / "xenstore"))


@pytest.fixture(scope="session")
def guests() -> Path:
    subprocess.run(["make", "-s", "-C", str(TESTS.parent / "guests")], check=True)
    return TESTS.parent / "guests" / "build"
