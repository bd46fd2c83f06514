"""Fixtures: a xenstored in a temporary state dir, clients for dom0 and for a domU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from xshost import Host

from pyxen.xenstore import Quotas, XenstoreClient


@pytest.fixture
def host(tmp_path: Path):
    h = Host(tmp_path / "xenstored")
    os.environ["XENSTORED_PATH"] = h.socket
    yield h
    h.stop()


@pytest.fixture
def small_host(tmp_path: Path):
    """A daemon with small quotas, as `--entry-nb 20 --watch-nb 4 ...` would set."""
    q = Quotas(nodes=20, watches=4, transactions=2, node_size=256, path_length=64,
               memory=64 * 1024)
    h = Host(tmp_path / "xenstored", q)
    yield h
    h.stop()


@pytest.fixture
def dom0(host: Host) -> XenstoreClient:
    return host.client()
