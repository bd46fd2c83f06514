"""Where a pyxen host keeps its runtime state.

One directory holds everything (sockets, domain state, logs) so that tests can run many
isolated hosts side by side by pointing PYXEN_RUNDIR somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RUNDIR = "/run/pyxen"


def rundir() -> Path:
    return Path(os.environ.get("PYXEN_RUNDIR", DEFAULT_RUNDIR))


def hostd_socket(root: Path | None = None) -> Path:
    return (root or rundir()) / "pyxend.sock"


def xenstored_socket(root: Path | None = None) -> Path:
    return (root or rundir()) / "xenstored" / "socket"


def xenstored_ro_socket(root: Path | None = None) -> Path:
    return (root or rundir()) / "xenstored" / "socket_ro"


def domain_dir(domid: int, root: Path | None = None) -> Path:
    return (root or rundir()) / "domains" / str(domid)
