"""Fixtures every suite may use, defined once: the VMM suite's real-guest fixtures
(tests/vmm/conftest.py: `guests`, `rundir`, `boot`) and the toolstack suite's test host
(tests/toolstack/conftest.py: `host`, a real hostd + xl with its own $PYXEN_RUNDIR and
nothing left behind). A suite's own conftest.py may still define its own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for sub in ("vmm", "toolstack"):  # their helper modules: vmm_helpers, xlhost
    if str(TESTS / sub) not in sys.path:
        sys.path.append(str(TESTS / sub))


def _load(sub: str):
    spec = importlib.util.spec_from_file_location(f"_pyxen_{sub}_conftest",
                                                  TESTS / sub / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_vmm = _load("vmm")
_toolstack = _load("toolstack")

guests = _vmm.guests
rundir = _vmm.rundir
boot = _vmm.boot
host = _toolstack.host
