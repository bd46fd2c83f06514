"""Fixtures of the grant table suite: the VMM suite's real-guest fixtures
(tests/vmm/conftest.py: `guests`, `rundir`, `boot`), imported, not copied."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

VMM_TESTS = Path(__file__).resolve().parents[1] / "vmm"
if str(VMM_TESTS) not in sys.path:
    sys.path.append(str(VMM_TESTS))

_spec = importlib.util.spec_from_file_location("_pyxen_vmm_conftest_gnttab",
                                               VMM_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_vmm_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_vmm_conftest)

guests = _vmm_conftest.guests
rundir = _vmm_conftest.rundir
boot = _vmm_conftest.boot
