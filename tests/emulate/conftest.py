"""Fixtures of the emulation and ACPI suite: the VMM suite's real-guest
fixtures (tests/vmm/conftest.py: `guests`, `rundir`, `boot`), imported, not copied."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

VMM_TESTS = Path(__file__).resolve().parents[1] / "vmm"
if str(VMM_TESTS) not in sys.path:
    sys.path.append(str(VMM_TESTS))

_spec = importlib.util.spec_from_file_location("_pyxen_vmm_conftest_emulate", VMM_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_vmm_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_vmm_conftest)

guests = _vmm_conftest.guests
rundir = _vmm_conftest.rundir
boot = _vmm_conftest.boot

# The toolstack suite's test host (tests/toolstack: a real hostd + xl, its own
# $PYXEN_RUNDIR, nothing left behind), for the tests that go through `xl`.
TOOLSTACK_TESTS = VMM_TESTS.parent / "toolstack"
if str(TOOLSTACK_TESTS) not in sys.path:
    sys.path.append(str(TOOLSTACK_TESTS))

_ts_spec = importlib.util.spec_from_file_location("_pyxen_toolstack_conftest_emulate",
                                                  TOOLSTACK_TESTS / "conftest.py")
assert _ts_spec is not None and _ts_spec.loader is not None
_toolstack_conftest = importlib.util.module_from_spec(_ts_spec)
_ts_spec.loader.exec_module(_toolstack_conftest)

host = _toolstack_conftest.host
