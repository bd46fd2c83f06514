"""Two pyxen hosts on this machine (two $PYXEN_RUNDIRs, two hostds and xenstoreds), for
migration between them; `xl` of either is the real one, in its own process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mighost import REPO, MigHost  # noqa: E402


@pytest.fixture
def hosts(tmp_path: Path):
    a = MigHost(root=tmp_path / "hostA", workdir=REPO)
    b = MigHost(root=tmp_path / "hostB", workdir=REPO)
    yield a, b
    errors = []
    for h in (a, b):
        try:
            h.stop()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, errors
