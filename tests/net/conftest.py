"""The network suite: netback driven by a Python frontend (pyfront.py), and real guests
with the C netfront (guests/netfront.c) pinged through a bridge in a network namespace."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "toolstack"):
    if str(extra) not in sys.path:
        sys.path.append(str(extra))

needs_root_net = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
    reason="needs root and /dev/net/tun (TAP devices, bridges, network namespaces)")
