"""The network suite: netback driven by a Python frontend (pyfront.py), and real guests
with the C netfront (guests/netfront.c, netguest.elf) pinged through a bridge from a
network namespace the test creates. Names of host-global objects (namespace, bridge,
veth, addresses) carry this process's pid, and are removed at teardown (netlan.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # netlan, pyfront; `host` comes from tests/conftest.py
    sys.path.append(str(HERE))

from netlan import make_lan  # noqa: E402


@pytest.fixture
def lan():
    with make_lan() as lan:
        yield lan
